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
    """Discrete schedule over steps 0..T: alpha_bar[0] = 1 (clean), betas[t] for t >= 1."""

    alpha_bar: torch.Tensor  # (T+1,) float64
    name: str

    @property
    def T(self) -> int:
        return len(self.alpha_bar) - 1

    def betas(self) -> torch.Tensor:
        """(T+1,) with betas[0] = 0: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped to 0.999."""
        ab = self.alpha_bar
        b = torch.zeros_like(ab)
        b[1:] = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
        return b


def shift_snr(alpha_bar: torch.Tensor, scale: float) -> torch.Tensor:
    """Divide the signal-to-noise ratio by scale^2: SNR' = SNR / scale^2 (the log-SNR shift of
    Hoogeboom et al. 2023, "simple diffusion"). A trajectory repeats each cell's information over
    many correlated channels, so at a given per-channel SNR the answer is far easier to read than
    the schedule suggests; scale > 1 keeps the high-noise region really uninformative."""
    return alpha_bar / (alpha_bar + scale ** 2 * (1 - alpha_bar))


def make_schedule(name: str, T: int, shift: float = 1.0) -> Schedule:
    """alpha_bar over T+1 steps; `shift` scales the noise (see shift_snr), 1 = the plain schedule."""
    if shift <= 0:
        raise ValueError(f"the schedule shift must be > 0, got {shift}")
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    if T < 1:
        raise ValueError(f"the schedule needs T >= 1 steps, got {T}")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    ab = shift_snr(SCHEDULES[name](t), shift)
    ab[0] = 1.0
    ab[1:] = ab[1:].clamp(min=1e-6, max=1 - 1e-6)  # keep every noised step strictly noisy
    ab = torch.minimum(ab, torch.cummin(ab, 0).values)  # monotone non-increasing
    return Schedule(ab, name)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, with t (B,) integer steps."""
    ab = schedule.alpha_bar.to(x0.device)[t].to(x0.dtype)  # (B,)
    ab = ab.view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
