"""Sudoku board codec for N x N boards with r x c boxes (4x4: 2x2, 6x6: 2x3, 9x9: 3x3).

Strings are row-major, one character per cell, `.` or `0` for a blank; the size is inferred
from the length (16, 36, 81). Boards are numpy int arrays of shape (L,) with 0 = blank and
1..N = digits. Model tokens follow TRM: 0 = pad, 1 = blank, 2..N+1 = digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAD, BLANK = 0, 1


class PuzzleError(ValueError):
    """A puzzle or answer that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Shape:
    """An N x N board with boxes of `r` rows x `c` columns (N = r * c)."""

    r: int
    c: int

    @property
    def n(self) -> int:
        return self.r * self.c

    @property
    def cells(self) -> int:
        return self.n * self.n

    @property
    def vocab(self) -> int:
        return self.n + 2  # pad, blank, digits

    @property
    def name(self) -> str:
        return f"{self.n}x{self.n}"

    def units(self) -> list[list[int]]:
        return units(self)


SHAPES = {16: Shape(2, 2), 36: Shape(2, 3), 81: Shape(3, 3)}
SHAPE_BY_N = {s.n: s for s in SHAPES.values()}


def shape_for_length(length: int) -> Shape:
    try:
        return SHAPES[length]
    except KeyError:
        raise PuzzleError(f"a board has 16, 36 or 81 cells, got {length}") from None


def shape_for_n(n: int) -> Shape:
    try:
        return SHAPE_BY_N[n]
    except KeyError:
        raise PuzzleError(f"board size must be 4, 6 or 9, got {n}") from None


@lru_cache(maxsize=None)
def _units(r: int, c: int) -> tuple[tuple[int, ...], ...]:
    n = r * c
    rows = [tuple(i * n + j for j in range(n)) for i in range(n)]
    cols = [tuple(i * n + j for i in range(n)) for j in range(n)]
    boxes = []
    for br in range(0, n, r):
        for bc in range(0, n, c):
            boxes.append(tuple((br + i) * n + bc + j for i in range(r) for j in range(c)))
    return tuple(rows + cols + boxes)


def units(shape: Shape) -> list[list[int]]:
    """Rows, then columns, then boxes, each a list of cell indices."""
    return [list(u) for u in _units(shape.r, shape.c)]


@lru_cache(maxsize=None)
def peers(r: int, c: int) -> tuple[tuple[int, ...], ...]:
    n = r * c
    out = [set() for _ in range(n * n)]
    for u in _units(r, c):
        for i in u:
            out[i].update(u)
    return tuple(tuple(sorted(p - {i})) for i, p in enumerate(out))


def parse(text: str, shape: Shape | None = None) -> np.ndarray:
    """Parse a board string into an int8 array (L,), 0 = blank."""
    text = text.strip()
    if shape is None:
        shape = shape_for_length(len(text))
    elif len(text) != shape.cells:
        raise PuzzleError(f"a {shape.name} board has {shape.cells} cells, got {len(text)}")
    out = np.zeros(shape.cells, dtype=np.int8)
    for i, ch in enumerate(text):
        if ch in ".0":
            continue
        if not ch.isdigit() or not 1 <= int(ch) <= shape.n:
            raise PuzzleError(f"bad character {ch!r} at cell {i} (allowed: . 0 1-{shape.n})")
        out[i] = int(ch)
    return out


def format_board(board: np.ndarray, blank: str = ".") -> str:
    return "".join(blank if v == 0 else str(int(v)) for v in np.asarray(board).reshape(-1))


def pretty(board: np.ndarray, shape: Shape | None = None) -> str:
    """Multi-line grid with box separators, for terminals."""
    board = np.asarray(board).reshape(-1)
    shape = shape or shape_for_length(board.size)
    n = shape.n
    lines = []
    for i in range(n):
        if i and i % shape.r == 0:
            lines.append("-+-".join("-" * (2 * shape.c - 1) for _ in range(n // shape.c)))
        row = board[i * n:(i + 1) * n]
        groups = [" ".join("." if v == 0 else str(int(v)) for v in row[j:j + shape.c])
                  for j in range(0, n, shape.c)]
        lines.append(" | ".join(groups))
    return "\n".join(lines)


def to_tokens(boards: np.ndarray) -> np.ndarray:
    """Boards (..., L) with 0 = blank -> TRM tokens (1 = blank, 2.. digits)."""
    return np.asarray(boards).astype(np.int64) + 1


def from_tokens(tokens: np.ndarray) -> np.ndarray:
    """TRM tokens -> boards; pad and blank both become 0."""
    t = np.asarray(tokens).astype(np.int64)
    return np.where(t >= 2, t - 1, 0).astype(np.int8)


def conflicts(board: np.ndarray, shape: Shape) -> list[tuple[int, int]]:
    """Pairs of cells in one unit holding the same digit (blanks ignored)."""
    board = np.asarray(board).reshape(-1)
    bad = []
    for u in _units(shape.r, shape.c):
        seen: dict[int, int] = {}
        for i in u:
            v = int(board[i])
            if v == 0:
                continue
            if v in seen:
                bad.append((seen[v], i))
            else:
                seen[v] = i
    return bad


def is_solution(puzzle: np.ndarray, board: np.ndarray, shape: Shape) -> bool:
    """True if `board` is complete, keeps the givens of `puzzle`, and every unit is a permutation."""
    puzzle = np.asarray(puzzle).reshape(-1)
    board = np.asarray(board).reshape(-1)
    if board.shape != puzzle.shape or np.any(board < 1) or np.any(board > shape.n):
        return False
    givens = puzzle > 0
    if np.any(board[givens] != puzzle[givens]):
        return False
    return not conflicts(board, shape)


def logits_to_digits(logits):
    """Decoded digits of token logits (..., V) (torch): argmax token - 1, so 0 = blank and pad
    becomes -1 (never a valid digit). The one tokens-to-digits rule of decoding."""
    return logits.argmax(-1) - 1


def constraints(puzzles, boards, shape: Shape):
    """Label-free constraint counts of boards (B, N) of digits for puzzles (B, N) (0 = blank), torch:
    every given kept, and for every unit (row, column, box) and digit, that digit exactly once.
    Returns (satisfied (B,), total (B,)); digits outside 1..n satisfy nothing."""
    import torch
    u = torch.as_tensor(units(shape), device=boards.device)  # (U, n)
    ok_digit = (boards >= 1) & (boards <= shape.n)  # (B, N)
    onehot = torch.nn.functional.one_hot((boards.clamp(1, shape.n) - 1).long(), shape.n) * ok_digit[..., None]
    counts = onehot[:, u].sum(2)  # (B, U, n): occurrences of each digit in each unit
    givens = puzzles > 0
    kept = (boards == puzzles) & givens
    satisfied = (counts == 1).sum((1, 2)) + kept.sum(-1)
    total = u.shape[0] * shape.n + givens.sum(-1)
    return satisfied, total


def valid_boards(puzzles, boards, shape: Shape):
    """(B,) True where `boards` (B, N) keep the givens of `puzzles` (B, N, 0 = blank) and every
    row, column and box holds each digit once (torch; the batched `is_solution`). No label used."""
    s, t = constraints(puzzles, boards, shape)
    return s == t
