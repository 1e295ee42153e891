"""Pure losses of trajectory distillation (METHOD.md section 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import Schedule


def snr(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    ab = schedule.alpha_bar.to(t.device)[t]
    return ab / (1 - ab)


def loss_weights(schedule: Schedule, t: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,) weights of the x0-MSE: uniform, or min-SNR-5 in its x0-prediction form,
    w_t = min(SNR_t, 5) (Hang et al. 2023, eq. 7), which stops the near-clean steps dominating."""
    if kind == "uniform":
        return torch.ones(t.shape, device=t.device)
    if kind == "min_snr":
        return torch.clamp(snr(schedule, t).float(), max=5.0)
    raise ValueError(f"loss_weighting must be uniform or min_snr, got {kind!r}")


def denoising_mse(x0_hat: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the batch of each sample's mean squared error."""
    per = (x0_hat.float() - x0.float()).square().reshape(x0.shape[0], -1).mean(-1)  # (B,)
    return (weights * per).mean()


def answer_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of decoded answer logits (B, L, V) against target tokens (B, L)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def row_mse(x0_hat: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-row noise levels: x0_hat, x0 (B, K, L, C), weights and the noised-row mask (B, K) ->
    the weighted mean over noised rows of each row's mean squared error (clean rows are context)."""
    per = (x0_hat.float() - x0.float()).square().flatten(2).mean(-1)  # (B, K)
    m = noisy.float()
    return (weights * per * m).sum() / m.sum().clamp_min(1.0)


def rows_ce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of per-row decoded logits (B, K, N, V) against targets (B, K, N), averaged over
    the cells of the rows selected by the mask `rows` (B, K) (all rows when None)."""
    per = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), reduction="none")
    per = per.view(targets.shape).mean(-1)  # (B, K)
    if rows is None:
        return per.mean()
    m = rows.float()
    return (per * m).sum() / m.sum().clamp_min(1.0)
