"""Pure loss functions of the TRM teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def stablemax_log_probs(logits: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """log of stablemax (Prieto et al. 2025), used by TRM instead of softmax, in float64.

    s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0; p_i = s(x_i) / sum_j s(x_j).
    """
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - x + eps))
    return torch.log(s / s.sum(-1, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per-token loss (B, C) for logits (B, C, V), labels (B, C); ignored tokens give 0."""
    logp = stablemax_log_probs(logits)
    mask = labels != ignore_index
    safe = torch.where(mask, labels, 0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, C)
    return torch.where(mask, nll, 0.0)


TRM_STATS = ("lm_loss", "q_loss", "cell_acc", "exact_acc")


def trm_loss_terms(logits: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, q_weight: float = 0.5,
                   ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stablemax CE (mean over each puzzle's cells, mean over the batch) + q_weight * BCE(q, solved),
    with no host synchronisation (compilable). Returns the scalar loss, the detached stats
    (TRM_STATS order, float64 (4,)) and the per-puzzle solved mask (B,)."""
    mask = labels != ignore_index
    per_tok = stablemax_cross_entropy(logits, labels, ignore_index)  # (B, C)
    counts = mask.sum(-1).clamp_min(1)
    lm = (per_tok.sum(-1) / counts).mean()
    with torch.no_grad():
        pred = logits.argmax(-1)
        right = (pred == labels) | ~mask  # (B, C)
        solved = right.all(-1)
    q_loss = F.binary_cross_entropy_with_logits(q, solved.to(q.dtype))
    loss = lm.float() + q_weight * q_loss
    with torch.no_grad():
        cell = ((pred == labels) & mask).sum().double() / mask.sum().clamp_min(1).double()
        stats = torch.stack([lm.detach().double(), q_loss.detach().double(), cell, solved.double().mean()])
    return loss, stats, solved


def trm_loss(logits: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, q_weight: float = 0.5,
             ignore_index: int = -100) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """`trm_loss_terms` with the stats as a dict of floats."""
    loss, stats, solved = trm_loss_terms(logits, q, labels, q_weight, ignore_index)
    return loss, dict(zip(TRM_STATS, stats.tolist())), solved
