"""Label-free Sudoku reward: 1 when the board is solved, plus a dense share of satisfied constraints.

Constraints of a board (B, N) of digits 1..n for puzzle (B, N) (0 = blank): every given kept, and
for every unit (row, column, box) and digit, that digit appears exactly once. Solved = all hold.
"""
from __future__ import annotations

import torch

from ..data.board import Shape, units


def constraints(puzzles: torch.Tensor, boards: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(satisfied (B,), total (B,)) constraint counts; digits outside 1..n satisfy nothing."""
    u = torch.as_tensor(units(shape), device=boards.device)  # (U, n)
    ok_digit = (boards >= 1) & (boards <= shape.n)  # (B, N)
    onehot = torch.nn.functional.one_hot((boards.clamp(1, shape.n) - 1).long(), shape.n) * ok_digit[..., None]
    counts = onehot[:, u].sum(2)  # (B, U, n): occurrences of each digit in each unit
    givens = puzzles > 0
    kept = (boards == puzzles) & givens
    satisfied = (counts == 1).sum((1, 2)) + kept.sum(-1)
    total = u.shape[0] * shape.n + givens.sum(-1)
    return satisfied, total


def solved(puzzles: torch.Tensor, boards: torch.Tensor, shape: Shape) -> torch.Tensor:
    """(B,) True where every constraint holds (uses no solution label)."""
    s, t = constraints(puzzles, boards, shape)
    return s == t


def reward(puzzles: torch.Tensor, boards: torch.Tensor, shape: Shape, dense_weight: float) -> torch.Tensor:
    """(B,) float: 1[solved] + dense_weight * satisfied / total."""
    s, t = constraints(puzzles, boards, shape)
    return (s == t).float() + dense_weight * s.float() / t.float()
