"""Pure pieces of GRPO over Gaussian reverse steps (DeepSeekMath's GRPO; DDPO / Flow-GRPO).

Log-probabilities are per-dimension means (`gaussian_log_prob(..., reduce="mean")`), so ratios
stay near 1 and the clip range is small (1e-4 .. 1e-3). Shapes: P puzzles, G group size, S samples.
"""
from __future__ import annotations

import torch

from ..diffusion.schedules import broadcast_levels


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """rewards (P, G) -> (r - mean_G) / (std_G + eps), clipped to +-clip; a constant group gets 0."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=False)
    adv = ((rewards - mean) / (std + eps)).clamp(-clip, clip)
    return torch.where(std > 0, adv, torch.zeros_like(adv))  # also when eps = 0 (no 0/0)


def clipped_ratio_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float
                       ) -> tuple[torch.Tensor, dict]:
    """PPO/GRPO clipped surrogate over samples (S,): -mean(min(rho A, clip(rho, 1-c, 1+c) A)),
    rho = exp(logp_new - logp_old). Also returns the clip fraction and approximate KL (k3) as floats."""
    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    with torch.no_grad():
        stats = {"clip_fraction": float(((ratio - 1).abs() > clip).float().mean()),
                 "approx_kl": float((ratio - 1 - log_ratio).mean())}
    return -surr.mean(), stats


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mean, s^2) || N(mean_ref, s^2)) per sample, as a per-dimension mean (S,):
    ||mean - mean_ref||^2 / (2 sigma^2 D) (Flow-GRPO's form; beta multiplies it in the loss). A
    per-row (K,) or per-cell (S, 1, L) sigma: the mean over the coordinates with sigma > 0 only
    (the others are deterministic, not part of the density)."""
    if not isinstance(sigma, torch.Tensor):
        return (mean - mean_ref).square().flatten(1).mean(-1) / (2 * sigma ** 2)
    s = broadcast_levels(sigma, mean).to(mean.dtype)
    noisy = (s > 0).expand_as(mean)
    per = torch.where(noisy, (mean - mean_ref).square() / (2 * s.clamp_min(1e-12) ** 2), torch.zeros_like(mean))
    return per.flatten(1).sum(-1) / noisy.flatten(1).sum(-1).clamp_min(1)


def elbo_surrogate_loss(loss_policy: torch.Tensor, loss_ref: torch.Tensor, adv: torch.Tensor,
                        negative_weight: float, trust: float) -> torch.Tensor:
    """SPG-like estimator over samples (S,), with per-sample denoising losses (the negative ELBO
    up to constants) of the policy and of the frozen reference on the same noised sample.

    Positive advantages: A * loss_policy (raise the lower bound of their likelihood). Negative
    advantages: push the loss up only while it stays below (1 + trust) * loss_ref, weighted by
    `negative_weight`: a bounded stand-in for SPG's upper bound, since raising a lower bound's
    negative is unbounded. Keeps GRPO's group-relative, std-normalised advantages; has no ratio or
    ratio clip (it is not an importance-sampled objective) and bounds the push-away instead of a KL."""
    pos = adv.clamp_min(0) * loss_policy
    capped = torch.minimum(loss_policy, (1 + trust) * loss_ref)
    neg = adv.clamp_max(0) * capped * negative_weight  # <= 0: minimising it raises capped
    return (pos + neg).mean()
