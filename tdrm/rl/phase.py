"""One RL phase: rollouts from the current policy, group rewards, and the policy update.

The policy is the reverse diffusion chain of an x0-predicting denoiser `model(x_t, t, puzzle,
x0_prev)`; each stochastic step is the Gaussian N(mean(x0_hat), sigma^2) of `step_mean`, so its
log-probability is exact. With self-conditioning, the x0_hat of the step before is part of each
step's input (recorded in the rollout, held fixed in the update); with latent self-conditioning
(`denoiser.latent_cond`) so is the hidden state of the call before.

A model trained with one noise level per trajectory row or per cell (`distill.row_noise`) is
trained the same way: its rollouts are the per-row or per-cell chain (`samplers.sample_rows`,
`sample_cells`), each recorded step's levels and sigma are tensors (per cell: one row per sample),
grpo recomputes the step with `row_step` and counts only the coordinates that moved with sigma > 0,
and the forward-process estimators re-noise a clean sample at levels of the form the model was
trained on (`renoise_levels`), scoring the noised rows or cells only (`masked_sample_mse`).

Shapes: S samples (= P puzzles x G group), R rows, L positions, C channels, N cells.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..diffusion.logprob import step_log_prob_mean
from ..diffusion.losses import masked_sample_mse
from ..diffusion.samplers import Sample, row_step, step_mean
from ..diffusion.schedules import Schedule, cell_levels, q_sample, random_ranks, row_levels
from .estimators import awm_loss, spg_loss, stratified_levels
from .grpo import clipped_ratio_loss, elbo_surrogate_loss, gaussian_kl


@dataclass
class Batch:
    """The rollouts of the kept groups, ready for updates."""

    puzzle: torch.Tensor  # (S, N) tokens
    sample: Sample  # path over all reverse steps, tensors (S, ...)
    adv: torch.Tensor  # (S,)
    self_cond: bool


PER_SAMPLE = ("x_t", "x0_hat", "mean", "x_prev", "log_prob", "hidden")  # a Step's fields with one row per sample
LEVELS = ("t", "t_prev", "sigma")  # one row per sample too in a per-cell chain ((S, 1, L) tensors)


def _fields(step) -> tuple[str, ...]:
    """The fields of a recorded step that hold one row per sample."""
    return PER_SAMPLE + tuple(k for k in LEVELS if isinstance(getattr(step, k), torch.Tensor)
                              and getattr(step, k).dim() == 3)


def subset(sample: Sample, idx: torch.Tensor) -> Sample:
    """The rows `idx` of every tensor of a sampled path."""
    take = lambda v: v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 else v  # noqa: E731
    return Sample(sample.x0[idx], [replace(s, **{k: take(getattr(s, k)) for k in _fields(s)}) for s in sample.path],
                  take(sample.ranks))


def concat(batches: list[Batch]) -> Batch:
    """One batch of the groups of several rollout rounds (same sampler, so the same steps)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    cat = lambda vs: None if vs[0] is None else torch.cat(vs)  # noqa: E731
    path = [replace(st, **{k: cat([getattr(b.sample.path[i], k) for b in batches]) for k in _fields(st)})
            for i, st in enumerate(first.sample.path)]
    ranks = cat([b.sample.ranks for b in batches])
    return Batch(torch.cat([b.puzzle for b in batches]), Sample(torch.cat([b.sample.x0 for b in batches]), path, ranks),
                 torch.cat([b.adv for b in batches]), first.self_cond)


def _prev(batch: Batch, i: int):
    return batch.sample.path[i - 1].x0_hat if batch.self_cond and i > 0 else None


def _inputs(model, batch: Batch, i: int) -> tuple:
    """What the recorded step i's call read beside (x_t, t, puzzle): the previous estimate, and for a
    latent_cond denoiser the previous call's hidden state (None at the first step)."""
    if not getattr(getattr(model, "cfg", None), "latent_cond", False):
        return (_prev(batch, i),)
    return _prev(batch, i), batch.sample.path[i - 1].hidden if i > 0 else None


def step_log_prob(model, batch: Batch, i: int, schedule: Schedule, eta: float, sigma_floor: float
                  ) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """(per-dimension mean log-prob (S,), mean, sigma) of the recorded step i under `model`. A
    per-row step (levels (K,)) or per-cell step (levels (S, 1, L)) is recomputed with `row_step`;
    its sigma is a tensor and its log-prob counts the coordinates that moved with sigma > 0."""
    st = batch.sample.path[i]
    s = st.x_t.shape[0]
    if not isinstance(st.t, torch.Tensor):  # one shared level
        t = torch.full((s,), st.t, dtype=torch.long, device=st.x_t.device)
        x0_hat = model(st.x_t, t, batch.puzzle, *_inputs(model, batch, i))
        mean, sigma = step_mean(schedule, st.x_t, x0_hat, st.t, st.t_prev, eta, sigma_floor)
    else:
        t = st.t if st.t.dim() == 3 else st.t.expand(s, -1)  # per cell (S, 1, L); per row (K,) -> (S, K)
        x0_hat = model(st.x_t, t, batch.puzzle, *_inputs(model, batch, i))
        mean, sigma = row_step(schedule, st.x_t, x0_hat, st.t, st.t_prev, eta, sigma_floor)
    return step_log_prob_mean(st.x_prev, mean, sigma), mean, sigma


def stochastic(step) -> bool:
    """Whether a recorded step drew noise (some coordinate with sigma > 0)."""
    return bool((step.sigma > 0).any()) if isinstance(step.sigma, torch.Tensor) else step.sigma > 0


def renoise_levels(model, schedule: Schedule, t: torch.Tensor, generator: torch.Generator,
                   ranks: torch.Tensor | None = None) -> torch.Tensor:
    """Shared integer levels t (S, ...) in 1..T -> the levels `model` was trained on, at the same
    overall progress p = 1 - t / T: t itself for a shared-level model; per row (S, ..., K) on its
    rolling schedule (`row_levels`, lag `model.row_lag`); per cell (S, ..., 1, L) on the cell-order
    schedule (`cell_levels`, window `model.cell_window`) of a fresh random order of the cells per
    level (prefix positions first), as distillation draws them, or, given `ranks` (S, L), of each
    sample's own order (the order its rollout chose, `Sample.ranks`: `rl.renoise_order: rollout`).
    With lag 0 or a window of 1 every row (cell) gets t itself."""
    lag, window = getattr(model, "row_lag", None), getattr(model, "cell_window", None)
    if lag is None and window is None:
        return t
    p = 1.0 - t.double() / schedule.T
    if lag is not None:
        return row_levels(p, model.K, lag, schedule.T).to(t.device)
    flat = p.reshape(-1).cpu()
    if ranks is None:
        ranks = random_ranks(flat.shape[0], model.L, model.P, generator)  # (S..., L)
    else:
        if ranks.shape != (t.shape[0], model.L):
            raise ValueError(f"ranks must be (S, L) = ({t.shape[0]}, {model.L}), got {tuple(ranks.shape)}")
        ranks = ranks.cpu().repeat_interleave(flat.shape[0] // t.shape[0], 0)  # (S..., L): each level its sample's
    return cell_levels(flat, ranks, window, schedule.T).reshape(*t.shape, 1, model.L).to(t.device)


def _renoise(model, schedule: Schedule, t: torch.Tensor, generator: torch.Generator, batch: Batch, cfg) -> torch.Tensor:
    """`renoise_levels` in the order `rl.renoise_order` names: `fresh` (a random order per level) or
    `rollout` (each sample's recorded order, `Sample.ranks`; a per-cell model's rollouts only)."""
    if cfg.renoise_order == "fresh":
        return renoise_levels(model, schedule, t, generator)
    if cfg.renoise_order != "rollout" or batch.sample.ranks is None:
        raise ValueError(f"rl.renoise_order {cfg.renoise_order!r}: fresh, or rollout for the rollouts of a per-cell "
                         f"model (distill.row_noise: cells), which record their order")
    return renoise_levels(model, schedule, t, generator, batch.sample.ranks)


def grpo_update(model, ref, opt, batch: Batch, schedule: Schedule, cfg, generator: torch.Generator,
                sync=None) -> dict:
    """GRPO over the chain (DDPO / Flow-GRPO): for a random `train_step_fraction` of the stochastic
    steps, the clipped-ratio loss on per-dimension mean log-probs plus beta times the closed-form
    KL to the reference's step. Keeps all of GRPO: group-relative std-normalised advantages, the
    ratio and its clip, the KL penalty (per step, exact for Gaussians instead of the k3 estimate).
    `cfg` is the RL config; runs `cfg.inner_epochs` optimizer steps and returns their statistics."""
    noisy = [i for i, s in enumerate(batch.sample.path) if stochastic(s)]
    if not noisy:
        raise ValueError("the rollouts have no stochastic step: use rl.eta > 0 or rl.sigma_floor > 0")
    k = max(1, round(cfg.train_step_fraction * len(noisy)))
    chosen = [noisy[j] for j in torch.randperm(len(noisy), generator=generator)[:k].tolist()]
    with torch.no_grad():
        old = {i: step_log_prob_mean(batch.sample.path[i].x_prev, batch.sample.path[i].mean,
                                     batch.sample.path[i].sigma) for i in chosen}
        ref_mean = {i: step_log_prob(ref, batch, i, schedule, cfg.eta, cfg.sigma_floor)[1] for i in chosen}
    stats = []
    for epoch in range(cfg.inner_epochs):
        opt.zero_grad(set_to_none=True)
        row = {"ratio_mean": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "kl": 0.0, "policy_loss": 0.0}
        for i in chosen:
            lp, mean, sigma = step_log_prob(model, batch, i, schedule, cfg.eta, cfg.sigma_floor)
            pg, st = clipped_ratio_loss(lp, old[i], batch.adv, cfg.clip)
            kl = gaussian_kl(mean, ref_mean[i], sigma).mean()
            ((pg + cfg.beta * kl) / k).backward()
            row["ratio_mean"] += float((lp.detach() - old[i]).exp().mean()) / k
            row["clip_fraction"] += st["clip_fraction"] / k
            row["approx_kl"] += st["approx_kl"] / k
            row["kl"] += float(kl.detach()) / k
            row["policy_loss"] += float(pg.detach()) / k
        row["grad_norm"] = _step(model, opt, cfg.grad_clip, sync)
        row["epoch"] = epoch
        stats.append(row)
    return _summarise(stats)


def elbo_update(model, ref, opt, batch: Batch, schedule: Schedule, cfg, generator: torch.Generator,
                sync=None) -> dict:
    """SPG-like ablation: the denoising loss of each generated trajectory at one random noise level
    (the negative ELBO up to constants) weighted by its advantage, `elbo_surrogate_loss`. Keeps
    GRPO's group-relative std-normalised advantages; drops the importance ratio and its clip (the
    surrogate is on-policy) and replaces the KL by the trust cap on the push-away term. The reverse
    chain's log-probs are not used, so rollouts may be deterministic."""
    x0 = batch.sample.x0  # (S, R, L, C)
    s = x0.shape[0]
    t = torch.randint(1, schedule.T + 1, (s,), generator=generator).to(x0.device)
    t = _renoise(model, schedule, t, generator, batch, cfg)  # (S,), per row (S, K), per cell (S, 1, L)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = q_sample(x0, t, schedule, eps)
    per = lambda m: masked_sample_mse(m(x_t, t, batch.puzzle, None), x0, t)  # noqa: E731  (S,)
    with torch.no_grad():
        loss_ref = per(ref)
    stats = []
    for epoch in range(cfg.inner_epochs):
        opt.zero_grad(set_to_none=True)
        loss_pol = per(model)
        loss = elbo_surrogate_loss(loss_pol, loss_ref, batch.adv, cfg.elbo_negative_weight, cfg.elbo_trust)
        loss.backward()
        stats.append({"policy_loss": float(loss.detach()), "denoise_loss": float(loss_pol.detach().mean()),
                      "denoise_loss_ref": float(loss_ref.mean()), "grad_norm": _step(model, opt, cfg.grad_clip, sync),
                      "epoch": epoch})
    return _summarise(stats)


def awm_update(model, ref, opt, batch: Batch, schedule: Schedule, cfg, generator: torch.Generator,
                sync=None) -> dict:
    """Advantage Weighted Matching (arXiv 2509.25050): each rollout's clean sample x0, re-noised with
    fresh noise at `rl.awm_levels` stratified levels in [1, awm_max_level * T] (the noisiest end
    skipped: there the prediction barely depends on x0), is denoised by the policy; `awm_loss` weights
    each denoising error by the sample's advantage (`awm_advantages`, in [-1, 1]) and anchors the
    prediction to the frozen reference's (`rl.anchor_beta`). No reverse-chain log-probs, ratio or clip:
    the rollouts' sampler may be anything. Self-conditioning input: none (as in half of distillation's
    batches). Runs `cfg.inner_epochs` optimizer steps on the same noised inputs."""
    x0 = batch.sample.x0.detach()  # (S, R, L, C)
    s, m = x0.shape[0], cfg.awm_levels
    hi = max(1, round(cfg.awm_max_level * schedule.T))
    t = stratified_levels(s, m, 1, hi, generator).to(x0.device)  # (S, M)
    t = _renoise(model, schedule, t, generator, batch, cfg)  # (S, M), per row (S, M, K), per cell (S, M, 1, L)
    eps = torch.randn((m, *x0.shape), generator=generator).to(x0.device)
    x_t = [q_sample(x0, t[:, j], schedule, eps[j]) for j in range(m)]
    with torch.no_grad():
        ref_hat = [ref(x_t[j], t[:, j], batch.puzzle, None) for j in range(m)]
    stats = []
    for epoch in range(cfg.inner_epochs):
        opt.zero_grad(set_to_none=True)
        err, anchor, total = [], [], 0.0
        for j in range(m):  # one level at a time: the graph of one (S, R, L, C) batch in memory
            x0_hat = model(x_t[j], t[:, j], batch.puzzle, None)
            e, a = masked_sample_mse(x0_hat, x0, t[:, j]), masked_sample_mse(x0_hat, ref_hat[j], t[:, j])  # (S,) each
            loss = awm_loss(e[:, None], batch.adv, a[:, None], cfg.anchor_beta) / m
            loss.backward()
            err.append(e.detach())
            anchor.append(a.detach())
            total += float(loss.detach())
        err, anchor = torch.stack(err, 1), torch.stack(anchor, 1)  # (S, M)
        stats.append({"policy_loss": total, "denoise_loss": float(err.mean()), "anchor": float(anchor.mean()),
                      "grad_norm": _step(model, opt, cfg.grad_clip, sync), "epoch": epoch})
    return _summarise(stats)


def spg_update(model, ref, opt, batch: Batch, schedule: Schedule, cfg, generator: torch.Generator,
                sync=None) -> dict:
    """SPG (arXiv 2510.09541) with forward-process likelihood bounds: each rollout's clean sample x0,
    re-noised at `rl.awm_levels` stratified levels in [1, awm_max_level * T] as for awm, gives its
    per-level denoising errors; `spg_loss` maximises the lower bound (ELBO surrogate) of samples with
    positive advantage (`spg_advantages`: r - group mean) and minimises the mixture
    `rl.spg_mix` x upper (EUBO surrogate, `rl.spg_beta`) + (1 - spg_mix) x lower of the others, plus
    `rl.anchor_beta` x the squared distance to the frozen reference's prediction. The upper bound
    couples a sample's levels, so the samples are processed in chunks with all their levels in one
    graph (memory of one level of the whole batch, as awm). No reverse-chain log-probs, ratio or clip."""
    x0 = batch.sample.x0.detach()  # (S, R, L, C)
    s, m = x0.shape[0], cfg.awm_levels
    hi = max(1, round(cfg.awm_max_level * schedule.T))
    t = stratified_levels(s, m, 1, hi, generator).to(x0.device)  # (S, M)
    t = _renoise(model, schedule, t, generator, batch, cfg)  # (S, M), per row (S, M, K), per cell (S, M, 1, L)
    eps = torch.randn((m, *x0.shape), generator=generator).to(x0.device)
    x_t = torch.stack([q_sample(x0, t[:, j], schedule, eps[j]) for j in range(m)], 1)  # (S, M, R, L, C)
    chunk = max(1, s // m)
    chunks = [slice(a, min(a + chunk, s)) for a in range(0, s, chunk)]

    def errors(net, sl, target_ref=None):
        """(err (s', M), anchor (s', M)) of samples `sl` at all their levels under `net`."""
        n = sl.stop - sl.start
        xt = x_t[sl].flatten(0, 1)  # (s' M, R, L, C)
        tt = t[sl].flatten(0, 1)  # (s' M,), per row (s' M, K), per cell (s' M, 1, L)
        pz = batch.puzzle[sl].repeat_interleave(m, 0)
        x0_hat = net(xt, tt, pz, None)
        x0r = x0[sl].repeat_interleave(m, 0)
        err = masked_sample_mse(x0_hat, x0r, tt).view(n, m)
        anchor = masked_sample_mse(x0_hat, target_ref, tt).view(n, m) if target_ref is not None else None
        return err, anchor, x0_hat

    with torch.no_grad():
        ref_hat = [errors(ref, sl)[2] for sl in chunks]
    stats = []
    for epoch in range(cfg.inner_epochs):
        opt.zero_grad(set_to_none=True)
        err_all, anchor_all, total = [], [], 0.0
        for sl, rh in zip(chunks, ref_hat):
            err, anchor, _ = errors(model, sl, rh)
            loss = spg_loss(err, batch.adv[sl], anchor, cfg.spg_beta, cfg.spg_mix, cfg.anchor_beta)
            loss = loss * (sl.stop - sl.start) / s  # chunk means -> the batch mean
            loss.backward()
            err_all.append(err.detach())
            anchor_all.append(anchor.detach())
            total += float(loss.detach())
        err, anchor = torch.cat(err_all), torch.cat(anchor_all)  # (S, M)
        stats.append({"policy_loss": total, "denoise_loss": float(err.mean()), "anchor": float(anchor.mean()),
                      "grad_norm": _step(model, opt, cfg.grad_clip, sync), "epoch": epoch})
    return _summarise(stats)


def rft_update(model, ref, opt, batch: Batch, schedule: Schedule, cfg, generator: torch.Generator,
                sync=None) -> dict:
    """Rejection-sampling fine-tuning, the baseline every estimator must beat at equal rollout
    budget: distillation's denoising loss (uniform weights, one random level per sample per
    optimizer step) on the policy's own samples that passed the label-free validity check (the
    batch holds only those; `batch.adv` is 1 for each), plus `rl.anchor_beta` x the squared
    distance to the frozen reference's prediction on the same input (`awm_loss` with every
    weight 1). No negatives. Without the anchor (anchor_beta 0) it collapsed on the default
    profile within 40 rollout batches (docs/RESULTS.md): refitting the denoiser to its own
    4-step samples drifts off the teacher's trajectories."""
    x0 = batch.sample.x0.detach()  # (S, R, L, C)
    s = x0.shape[0]
    stats = []
    for epoch in range(cfg.inner_epochs):
        t = torch.randint(1, schedule.T + 1, (s,), generator=generator).to(x0.device)
        t = _renoise(model, schedule, t, generator, batch, cfg)  # (S,), per row (S, K), per cell (S, 1, L)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = q_sample(x0, t, schedule, eps)
        with torch.no_grad():
            ref_hat = ref(x_t, t, batch.puzzle, None) if cfg.anchor_beta else None
        opt.zero_grad(set_to_none=True)
        x0_hat = model(x_t, t, batch.puzzle, None)
        err = masked_sample_mse(x0_hat, x0, t)  # (S,)
        anchor = masked_sample_mse(x0_hat, ref_hat, t) if ref_hat is not None else torch.zeros_like(err)
        loss = awm_loss(err[:, None], batch.adv, anchor[:, None], cfg.anchor_beta)
        loss.backward()
        stats.append({"policy_loss": float(loss.detach()), "denoise_loss": float(err.detach().mean()),
                      "anchor": float(anchor.detach().mean()), "grad_norm": _step(model, opt, cfg.grad_clip, sync),
                      "epoch": epoch})
    return _summarise(stats)


UPDATES = {"grpo": grpo_update, "elbo": elbo_update, "awm": awm_update, "spg": spg_update, "rft": rft_update}


def idle_update(model, opt, cfg, sync) -> dict:
    """A data-parallel rank without a kept group this round: its `cfg.inner_epochs` optimizer steps
    with zero gradients of its own, so that it takes part in every gradient sum (`sync`,
    `dist.gradient_sync`) and steps with the others' gradients."""
    for _ in range(cfg.inner_epochs):
        opt.zero_grad(set_to_none=True)
        _step(model, opt, cfg.grad_clip, sync)
    return {}


def _step(model, opt, grad_clip: float, sync=None) -> float:
    """Clip and step; `sync` (data parallel) first sums the ranks' gradients."""
    if sync is not None:
        sync()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    opt.step()
    return float(norm)


def _summarise(stats: list[dict]) -> dict:
    """Mean over inner epochs, plus the first epoch's ratio (1 up to rounding: same policy)."""
    out = {k: sum(r[k] for r in stats) / len(stats) for k in stats[0] if k != "epoch"}
    if "ratio_mean" in stats[0]:
        out["ratio_first_epoch"] = stats[0]["ratio_mean"]
    return out
