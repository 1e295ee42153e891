"""Label-free Sudoku reward: 1 when the board is solved, plus a dense share of satisfied constraints
(the constraint counts and the validity check live in `tdrm.data.board`).

Constraints of a board (B, N) of digits 1..n for puzzle (B, N) (0 = blank): every given kept, and
for every unit (row, column, box) and digit, that digit appears exactly once. Solved = all hold.
"""
from __future__ import annotations

import torch

from ..data.board import Shape, constraints


def reward(puzzles: torch.Tensor, boards: torch.Tensor, shape: Shape, dense_weight: float) -> torch.Tensor:
    """(B,) float: 1[solved] + dense_weight * satisfied / total."""
    s, t = constraints(puzzles, boards, shape)
    return (s == t).float() + dense_weight * s.float() / t.float()
