"""Pure losses of trajectory distillation (METHOD.md section 3).

`distillation_loss` is the whole objective (weighted x0-MSE + ce_weight * decoded cross-entropy),
used by distillation training; `sample_mse` is its per-sample denoising term, which the ELBO arm
of RL weights by advantages.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .schedules import Schedule, broadcast_levels


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


def sample_mse(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(B,) each sample's mean squared error over all its other dimensions."""
    return (x0_hat.float() - x0.float()).square().reshape(x0.shape[0], -1).mean(-1)


def masked_sample_mse(x0_hat: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B,) each sample's mean squared error over its noised coordinates, for x0_hat, x0 (B, K, L, C)
    at levels t: (B,) one level per sample, every coordinate (`sample_mse`); (B, K) per row or
    (B, 1, L) per cell, the rows (cells) with t > 0 only (clean ones are context)."""
    if t.dim() == 1:
        return sample_mse(x0_hat, x0)
    per = (x0_hat.float() - x0.float()).square()  # (B, K, L, C)
    m = broadcast_levels(t > 0, per).expand_as(per).float().reshape(x0.shape[0], -1)
    return (per.reshape(x0.shape[0], -1) * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def denoising_mse(x0_hat: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the batch of each sample's mean squared error."""
    return (weights * sample_mse(x0_hat, x0)).mean()


def answer_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of decoded answer logits (B, L, V) against target tokens (B, L)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def row_mse(x0_hat: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-row noise levels: x0_hat, x0 (B, K, L, C), weights and the noised-row mask (B, K) ->
    the weighted mean over noised rows of each row's mean squared error (clean rows are context)."""
    per = (x0_hat.float() - x0.float()).square().flatten(2).mean(-1)  # (B, K)
    m = noisy.float()
    return (weights * per * m).sum() / m.sum().clamp_min(1.0)


def rows_ce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of per-row decoded logits (B, K, N, V) against targets (B, K, N), averaged over
    the cells of the rows selected by the mask `rows` (B, K) (all rows when None); `weights`
    (B, K, N) scale each cell's term without renormalising (`error_weights`)."""
    per = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), reduction="none")
    per = per.view(targets.shape)  # (B, K, N)
    if weights is not None:
        per = per * weights
    per = per.mean(-1)  # (B, K)
    if rows is None:
        return per.mean()
    m = rows.float()
    return (per * m).sum() / m.sum().clamp_min(1.0)


def cell_mse(x0_hat: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-cell noise levels: x0_hat, x0 (B, K, L, C), weights and the noised-cell mask (B, 1, L) ->
    the weighted mean over the noised cells (all their rows) of each cell's mean squared error
    (clean cells are context)."""
    per = (x0_hat.float() - x0.float()).square().mean(-1)  # (B, K, L)
    m = noisy.float().expand_as(per)
    return (weights * per * m).sum() / m.sum().clamp_min(1.0)


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of logits (..., V) against targets (...), averaged over the entries where
    `mask` (broadcastable to targets) is true; `weights` (shaped as targets) scale each entry's
    term without renormalising (a weight-w entry counts w times)."""
    per = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          reduction="none").view(targets.shape)
    m = mask.float().expand_as(per)
    if weights is not None:
        per = per * weights
    return (per * m).sum() / m.sum().clamp_min(1.0)


def error_weights(targets: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-cell cross-entropy weights (B, K, N) for per-row targets (B, K, N): `weight` on the cells
    of rows 1..K-1 whose target differs from the last row's (where the teacher's board after step
    k is not the answer: its intermediate errors), 1 elsewhere."""
    if targets.dim() != 3:
        raise ValueError(f"error weights need per-row targets (B, K, N), got shape {tuple(targets.shape)}")
    if weight <= 0:
        raise ValueError(f"distill.ce_error_weight must be > 0, got {weight}")
    wrong = targets != targets[:, -1:]  # (B, K, N); the last row never differs from itself
    return torch.where(wrong, torch.full((), float(weight), device=targets.device),
                       torch.ones((), device=targets.device))


class DistillLoss(NamedTuple):
    loss: torch.Tensor  # () mse + ce_weight * ce, what is differentiated
    mse: torch.Tensor   # () weighted denoising term
    ce: torch.Tensor    # () decoded cross-entropy term


def distillation_loss(x0_hat: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, *,
                      weighting: str, ce_logits: torch.Tensor, ce_targets: torch.Tensor,
                      ce_weight: float, ce_cell_weights: torch.Tensor | None = None) -> DistillLoss:
    """The distillation objective for predictions x0_hat of trajectories x0 (B, K, L, C) at levels t:
    (B,) one level per trajectory, (B, K) one per row or (B, 1, L) one per cell, where rows (cells)
    at level 0 are clean context and carry no loss. The denoising term is the x0-MSE weighted by `loss_weights(weighting)`; the
    CE term decodes either the answer, logits (B, N, V) against (B, N), or every row, logits
    (B, K, N, V) against (B, K, N) over the noised rows, each cell's term scaled by `ce_cell_weights`
    (B, K, N) when given (per-row targets only)."""
    if ce_cell_weights is not None and ce_logits.dim() != 4:
        raise ValueError("ce_cell_weights weight per-row targets: they need logits (B, K, N, V)")
    weights = loss_weights(schedule, t, weighting)  # (B,), (B, K) or (B, 1, L)
    if t.dim() == 3:  # one level per cell (B, 1, L): the loss is over the noised cells
        noisy = t > 0
        mse = cell_mse(x0_hat, x0, weights, noisy)
        cells = noisy[..., noisy.shape[-1] - ce_logits.shape[-2]:]  # (B, 1, N): decoded cells, not prefix
        ce = masked_ce(ce_logits, ce_targets, cells if ce_logits.dim() == 4 else cells[:, 0], ce_cell_weights)
        return DistillLoss(mse + ce_weight * ce, mse, ce)
    noisy = t > 0 if t.dim() == 2 else None  # (B, K)
    mse = denoising_mse(x0_hat, x0, weights) if noisy is None else row_mse(x0_hat, x0, weights, noisy)
    if ce_logits.dim() == 4:
        ce = rows_ce(ce_logits, ce_targets, noisy, ce_cell_weights)
    elif ce_logits.dim() == 3:
        ce = answer_ce(ce_logits, ce_targets)
    else:
        raise ValueError(f"ce_logits must be (B, N, V) or (B, K, N, V), got shape {tuple(ce_logits.shape)}")
    return DistillLoss(mse + ce_weight * ce, mse, ce)
