"""Pure pieces of the forward-process RL estimators and the rejection-sampling baseline (issue 14;
formulas and sources in ../shared/docs/RECIPES.md section 2).

None of them uses the reverse chain's log-probabilities: each trains the denoiser on the policy's
own clean samples x0, re-noised with fresh noise, the way distillation trains it on the teacher's.
Shapes: S samples (= P puzzles x G group), M noise levels per sample.
"""
from __future__ import annotations

import numpy as np
import torch


def awm_advantages(rewards: torch.Tensor, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """Advantage Weighted Matching's advantages (arXiv 2509.25050, the public training script):
    rewards (P, G) -> (r - group mean) / (std over the whole batch + eps), clipped to +-clip and
    divided by clip, so they lie in [-1, 1]; a constant group gets 0."""
    centred = rewards - rewards.mean(-1, keepdim=True)
    adv = (centred / (rewards.std(unbiased=False) + eps)).clamp(-clip, clip) / clip
    const = rewards.std(-1, keepdim=True, unbiased=False) == 0
    return torch.where(const, torch.zeros_like(adv), adv)


def stratified_levels(samples: int, m: int, lo: int, hi: int, generator: torch.Generator) -> torch.Tensor:
    """(samples, m) integer noise levels, the j-th drawn uniformly from the j-th of m equal strata of
    [lo, hi] (each sample sees the whole range, low to high noise, in every update)."""
    if not 1 <= lo <= hi:
        raise ValueError(f"levels need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    if m < 1:
        raise ValueError(f"at least one level per sample, got {m}")
    edges = torch.linspace(lo, hi + 1, m + 1, dtype=torch.float64)  # m strata of [lo, hi + 1)
    u = torch.rand((samples, m), generator=generator, dtype=torch.float64)
    t = (edges[:-1] + u * (edges[1:] - edges[:-1])).floor().long()
    return t.clamp(lo, hi)


def awm_loss(err: torch.Tensor, adv: torch.Tensor, anchor: torch.Tensor, beta: float) -> torch.Tensor:
    """Advantage-weighted matching: err (S, M), each sample's denoising error at each of its levels
    (its x0-MSE: the negative ELBO's term up to weights), adv (S,), anchor (S, M) the squared
    distance of the policy's prediction to the frozen reference's on the same input ->
    mean(A * err) + beta * mean(anchor). Positive advantages pull the policy toward their samples,
    negative ones push it away; the anchor bounds the push (with x0-prediction the unanchored
    optimum moves without limit along sum_i A_i x0_i)."""
    if err.shape != anchor.shape or err.shape[0] != adv.shape[0]:
        raise ValueError(f"err {tuple(err.shape)}, anchor {tuple(anchor.shape)} and adv {tuple(adv.shape)} "
                         "must agree on samples (and levels)")
    return (adv[:, None] * err).mean() + beta * anchor.mean()


def spg_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """SPG's advantages (arXiv 2510.09541, the public trainer): rewards (P, G) -> r - group mean, not
    divided by any std (so a group's spread sets the step size); a constant group gets exactly 0."""
    return rewards - rewards.mean(-1, keepdim=True)


def spg_bounds(err: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sides of SPG's sandwich for a Gaussian denoiser: err (S, M), each sample's denoising
    error (x0-MSE) at each of its M noise levels, taken as the negative per-level log-likelihood
    term. Returns (lower, upper), each (S,):
      lower = -mean_j err_j                               the ELBO surrogate (uniform weighting),
      upper = (1/beta) log mean_j exp(-beta err_j)         the EUBO surrogate (Renyi-style),
    with lower <= upper for every beta > 0 (Jensen), equal when the errors agree across levels;
    beta -> 0 gives the ELBO, large beta the best level's error. The gradient of `upper` weights
    each level by softmax(-beta err): it pushes hardest where the sample is matched best.
    (SPG's masked-diffusion EUBO is (1/beta) log E_t[p_t^beta / t]; here the levels are drawn
    stratified-uniform, so no 1/t weight.)"""
    if beta <= 0:
        raise ValueError(f"rl.spg_beta must be > 0, got {beta}")
    m = err.shape[-1]
    lower = -err.mean(-1)
    upper = (torch.logsumexp(-beta * err, dim=-1) - np.log(m)) / beta
    return lower, upper


def spg_loss(err: torch.Tensor, adv: torch.Tensor, anchor: torch.Tensor, beta: float, mix: float,
             anchor_beta: float) -> torch.Tensor:
    """Sandwiched policy gradient (arXiv 2510.09541) over samples: err and anchor (S, M), adv (S,)
    (`spg_advantages`). Each sample's log-likelihood surrogate is the lower bound when its advantage
    is positive and, when it is <= 0, the mixture mix * upper + (1 - mix) * lower (SPG's `mix`
    estimator; mix = 1 is its pure `eubo`); loss = -mean(adv * surrogate) + anchor_beta * mean(anchor).
    Raising a lower bound of a good sample's likelihood raises the likelihood; lowering an UPPER
    bound of a bad sample's lowers it (lowering a lower bound, the `elbo` ablation, need not).
    The anchor to the frozen reference is not in SPG (which has no KL); it is kept as for awm,
    since with x0-prediction nothing else bounds the push away from bad samples."""
    if err.shape != anchor.shape or err.shape[0] != adv.shape[0]:
        raise ValueError(f"err {tuple(err.shape)}, anchor {tuple(anchor.shape)} and adv {tuple(adv.shape)} "
                         "must agree on samples (and levels)")
    if not 0 <= mix <= 1:
        raise ValueError(f"rl.spg_mix must be in [0, 1], got {mix}")
    lower, upper = spg_bounds(err, beta)
    surrogate = torch.where(adv > 0, lower, mix * upper + (1 - mix) * lower)  # (S,)
    return -(adv * surrogate).mean() + anchor_beta * anchor.mean()


def rft_keep(rewards: torch.Tensor) -> torch.Tensor:
    """Rejection-sampling fine-tuning's selection: rewards (P, G) -> (P, G) bool, the samples whose
    board passes the label-free validity check (the reward's solved term, reward >= 1)."""
    return rewards >= 1


def curriculum_weights(ratings, power: float):
    """Sampling weights of training puzzles from the exact solver's difficulty ratings (M,) (-1 =
    unknown, taken as 0): (1 + rating) ** power; power 0 = uniform, larger = harder puzzles earlier."""
    r = np.clip(np.asarray(ratings, dtype=np.float64), 0, None)
    return (1.0 + r) ** power


def weighted_order(weights, rng):
    """A random permutation of range(M) in which index i comes early with probability growing with
    weights[i] (sampling without replacement, by the Gumbel-top-k trick: argsort of log w + Gumbel)."""
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError("curriculum weights must be positive and finite")
    keys = np.log(w) + rng.gumbel(size=w.shape)
    return np.argsort(-keys, kind="stable")
