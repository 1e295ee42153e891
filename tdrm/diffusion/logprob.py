"""Exact log-probabilities of Gaussian reverse steps (DDPO, Black et al. 2023; Flow-GRPO)."""
from __future__ import annotations

import math

import torch


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
