"""Noise schedules as pure functions of t in [0, 1] and their discretisation.

alpha_bar(t) is the signal fraction of q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def alpha_bar_sqrt(t: torch.Tensor, s: float = 1e-4) -> torch.Tensor:
    """Diffusion-LM's sqrt schedule (Li et al. 2022, eq. in section 4.2): 1 - sqrt(t + s)."""
    return (1 - torch.sqrt(t + s)).clamp(min=0.0, max=1.0)


def alpha_bar_cosine(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


SCHEDULES = {"sqrt": alpha_bar_sqrt, "cosine": alpha_bar_cosine}


@dataclass(frozen=True)
class Schedule:
    """Discrete schedule over steps 0..T: alpha_bar[0] = 1 (clean)."""

    alpha_bar: torch.Tensor  # (T+1,) float64
    name: str
    spacing: float = 1.0  # the power of the samplers' time spacing (`samplers.timesteps`): 1 = even

    @property
    def T(self) -> int:
        return len(self.alpha_bar) - 1


def shift_snr(alpha_bar: torch.Tensor, scale: float) -> torch.Tensor:
    """Divide the signal-to-noise ratio by scale^2: SNR' = SNR / scale^2 (the log-SNR shift of
    Hoogeboom et al. 2023, "simple diffusion"). A trajectory repeats each cell's information over
    many correlated channels, so at a given per-channel SNR the answer is far easier to read than
    the schedule suggests; scale > 1 keeps the high-noise region really uninformative."""
    return alpha_bar / (alpha_bar + scale ** 2 * (1 - alpha_bar))


def make_schedule(name: str, T: int, shift: float = 1.0, spacing: float = 1.0) -> Schedule:
    """alpha_bar over T+1 steps; `shift` scales the noise (see shift_snr), 1 = the plain schedule;
    `spacing` is the power of the samplers' time spacing (`samplers.timesteps`), 1 = even."""
    if shift <= 0:
        raise ValueError(f"the schedule shift must be > 0, got {shift}")
    if spacing <= 0:
        raise ValueError(f"the sampling time spacing must be > 0, got {spacing}")
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    if T < 1:
        raise ValueError(f"the schedule needs T >= 1 steps, got {T}")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    ab = shift_snr(SCHEDULES[name](t), shift)
    ab[0] = 1.0
    ab[1:] = ab[1:].clamp(min=1e-6, max=1 - 1e-6)  # keep every noised step strictly noisy
    ab = torch.minimum(ab, torch.cummin(ab, 0).values)  # monotone non-increasing
    return Schedule(ab, name, float(spacing))


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, with t (B,) integer steps (one level per sample)
    or (B, K) (one level per trajectory row of x0 (B, K, ...))."""
    ab = schedule.alpha_bar.to(x0.device)[t].to(x0.dtype)  # (B,) or (B, K)
    ab = ab.view(*t.shape, *([1] * (x0.dim() - t.dim())))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def broadcast_levels(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-row or per-cell values (levels, sigmas, masks) made broadcastable against trajectories
    x (B, K, L, C): per row (K,) -> (1, K, 1, 1); per sample and row (B, K) -> (B, K, 1, 1); per
    cell (B, 1, L) -> (B, 1, L, 1). (One level per sample, (B,), is not a per-row value: q_sample
    takes it.)"""
    if v.dim() == 1:
        return v.view(1, -1, 1, 1)
    if v.dim() in (2, 3):
        return v.view(*v.shape, *([1] * (x.dim() - v.dim())))
    raise ValueError(f"per-row or per-cell values are (K,), (B, K) or (B, 1, L); got shape {tuple(v.shape)}")


def row_levels(progress: torch.Tensor, rows: int, lag: float, T: int) -> torch.Tensor:
    """Per-row integer noise levels of the rolling schedule (Diffusion Forcing's pyramid /
    Rolling Diffusion), progress p (...,) in [0, 1] -> (..., rows) steps in 0..T:

        tau_r(p) = clip(1 - (p (1 + (rows - 1) lag) - r lag), 0, 1),   t_r = round(T tau_r).

    p = 0 is pure noise everywhere, p = 1 clean everywhere; row r starts denoising when row r - 1 is
    a fraction `lag` of the way: lag 0 = one shared level (plain diffusion), lag 1 = row by row
    (autoregressive over rows), in between overlapping (the pyramid)."""
    if not 0.0 <= lag <= 1.0:
        raise ValueError(f"distill.row_lag must be in [0, 1], got {lag}")
    r = torch.arange(rows, dtype=torch.float64, device=progress.device)
    p = progress.double()[..., None]
    tau = (1 - (p * (1 + (rows - 1) * lag) - r * lag)).clamp(0.0, 1.0)
    return torch.round(tau * T).long()


def cell_starts(cells: int, window: float) -> torch.Tensor:
    """Progress (cells,) float64 at which the cell of rank r (0 = first) starts denoising when each
    cell takes a fraction `window` of the run: starts spread evenly over [0, 1 - window]."""
    if not 0.0 < window <= 1.0:
        raise ValueError(f"distill.cell_window must be in (0, 1], got {window}")
    r = torch.arange(cells, dtype=torch.float64)
    return r / max(cells - 1, 1) * (1.0 - window)


def cell_levels(progress: torch.Tensor, ranks: torch.Tensor, window: float, T: int) -> torch.Tensor:
    """Per-cell integer noise levels of the cell-order schedule (the continuous analogue of a masked
    diffusion's unmasking order; Kim et al. 2025, arXiv 2502.06768): progress p (B,) in [0, 1] and
    each cell's rank in the order (B, L) long (a rank < 0 = not yet placed: still pure noise) ->
    levels (B, 1, L) in 0..T, shared by the cell's trajectory rows (the 1 broadcasts over them):

        tau_c(p) = clip(1 - (p - start(rank_c)) / window, 0, 1),   t_c = round(T tau_c),

    start(r) from `cell_starts`. p = 0 is pure noise everywhere, p = 1 clean everywhere; window 1 is
    one shared level (plain diffusion), a small window denoises the cells nearly one at a time."""
    starts = cell_starts(ranks.shape[-1], window).to(ranks.device)
    s = starts[ranks.clamp(min=0)]  # (B, L)
    tau = (1 - (progress.double().to(ranks.device)[:, None] - s) / window).clamp(0.0, 1.0)
    tau = torch.where(ranks < 0, torch.ones_like(tau), tau)
    return torch.round(tau * T).long()[:, None]  # (B, 1, L)


def random_ranks(b: int, cells: int, prefix: int, generator: torch.Generator) -> torch.Tensor:
    """(B, L) ranks of a uniformly random order of the `cells` positions per sample, the `prefix`
    positions first (ranks 0..prefix-1 in place): what training draws for the cell-order schedule."""
    order = torch.rand((b, cells - prefix), generator=generator).argsort(-1).argsort(-1) + prefix
    return torch.cat([torch.arange(prefix).expand(b, -1), order], dim=1)


def cells_started(progress: float, cells: int, window: float) -> int:
    """How many cells have started denoising by progress p (ranks 0..n-1 have start < p, or all of
    them at p >= 1)."""
    if progress >= 1.0:
        return cells
    return int((cell_starts(cells, window) < progress).sum())
