"""Exact log-probabilities of Gaussian reverse steps (DDPO, Black et al. 2023; Flow-GRPO)."""
from __future__ import annotations

import math

import torch

from .schedules import broadcast_levels


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float,
                      reduce: str = "sum") -> torch.Tensor:
    """log N(x; mean, sigma^2 I) per sample: (B,).

    log p = -||x - mean||^2 / (2 sigma^2) - D log sigma - D/2 log(2 pi). `reduce="mean"` divides
    by D (the per-dimension mean used by the GRPO ratio).
    """
    b = x.shape[0]
    d = x[0].numel()
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    sigma = sigma.reshape(-1) if sigma.dim() else sigma.expand(b)
    diff = (x.double() - mean.double()).reshape(b, -1)
    lp = -diff.square().sum(-1) / (2 * sigma ** 2) - d * torch.log(sigma) - 0.5 * d * math.log(2 * math.pi)
    return lp / d if reduce == "mean" else lp


def masked_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(sigma^2)) per sample (B,) over the coordinates where `mask` is true;
    sigma and mask broadcast against x (e.g. (B, 1, L, 1) against (B, K, L, C): one sigma per cell).
    Masked-out coordinates (sigma 0: deterministic) are not part of the density."""
    m = mask.expand_as(x)
    s = torch.where(m, sigma.double().expand_as(x), torch.ones((), dtype=torch.float64, device=x.device))
    z = (x.double() - mean.double()) / s
    per = -0.5 * z.square() - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return torch.where(m, per, torch.zeros_like(per)).reshape(x.shape[0], -1).sum(-1)


def step_log_prob_mean(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The per-dimension mean log-probability (B,) of a reverse step's draw x (B, K, L, C) under
    N(mean, sigma^2): a float sigma is one level for the whole sample (`gaussian_log_prob`,
    reduce="mean"); a per-row (K,) or per-cell (B, 1, L) sigma counts only the coordinates that
    moved with sigma > 0 (the others are deterministic), divided by their number."""
    if not isinstance(sigma, torch.Tensor):
        return gaussian_log_prob(x, mean, sigma, reduce="mean")
    s = broadcast_levels(sigma, x)
    noisy = s > 0
    lp = masked_gaussian_log_prob(x, mean, s, noisy)
    return lp / noisy.expand_as(x).reshape(x.shape[0], -1).sum(-1).clamp_min(1)
