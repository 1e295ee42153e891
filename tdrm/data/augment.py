"""Validity-preserving symmetries of an r x c-box Sudoku and a canonical form under them.

The group: digit relabelling, permutation of bands (groups of r rows) and of rows inside a
band, permutation of stacks (groups of c columns) and of columns inside a stack, and the
transpose when r == c (a 2x3 board transposed has 3x2 boxes, a different shape).
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from .board import Shape


def _line_perm(rng: np.random.Generator, groups: int, size: int) -> np.ndarray:
    """A permutation of groups*size lines that moves whole groups and lines within groups."""
    order = rng.permutation(groups)
    return np.concatenate([g * size + rng.permutation(size) for g in order])


def random_transform(shape: Shape, rng: np.random.Generator) -> dict:
    """Draw one group element: rows, cols (index arrays), transpose flag, digit map (0 -> 0)."""
    n = shape.n
    return {
        "rows": _line_perm(rng, n // shape.r, shape.r),
        "cols": _line_perm(rng, n // shape.c, shape.c),
        "transpose": bool(shape.r == shape.c and rng.random() < 0.5),
        "digits": np.concatenate([[0], 1 + rng.permutation(n)]).astype(np.int8),
    }


def apply_transform(boards: np.ndarray, shape: Shape, t: dict) -> np.ndarray:
    """Apply one transform to boards (..., L); the same call maps a puzzle and its solution."""
    n = shape.n
    grid = np.asarray(boards).reshape(*np.shape(boards)[:-1], n, n)
    if t["transpose"]:
        grid = np.swapaxes(grid, -1, -2)
    grid = grid[..., t["rows"], :][..., :, t["cols"]]
    return t["digits"][grid].reshape(*np.shape(boards)[:-1], n * n)


def augment(puzzle: np.ndarray, solution: np.ndarray, shape: Shape,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = random_transform(shape, rng)
    return apply_transform(puzzle, shape, t), apply_transform(solution, shape, t)


@lru_cache(maxsize=None)
def _line_perms(groups: int, size: int) -> np.ndarray:
    """Every group-respecting permutation of groups*size lines, (P, groups*size)."""
    out = []
    for order in itertools.permutations(range(groups)):
        for inner in itertools.product(*[list(itertools.permutations(range(size)))] * groups):
            out.append([g * size + i for g, perm in zip(order, inner) for i in perm])
    return np.array(out, dtype=np.int64)


@lru_cache(maxsize=None)
def _pairs(R: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (row perm, col perm) index pair, flattened: (R*C,), (R*C,)."""
    return np.repeat(np.arange(R), C), np.tile(np.arange(C), R)


def _relabel(rows: np.ndarray) -> np.ndarray:
    """Rename digits in order of first appearance along each row of (M, L); blanks stay 0."""
    out = np.zeros_like(rows)
    for k in range(len(rows)):
        mapping: dict[int, int] = {}
        r = rows[k]
        o = out[k]
        for i, v in enumerate(r.tolist()):
            if v:
                if v not in mapping:
                    mapping[v] = len(mapping) + 1
                o[i] = mapping[v]
    return out


def canonical(puzzle: np.ndarray, shape: Shape) -> str:
    """Canonical form of a puzzle under the symmetry group, as a string.

    It is the lexicographic minimum over the group of (given-mask, digits renamed in order of
    first appearance): first the minimum 0/1 mask over all row/column/transpose transforms
    (vectorised), then, among the transforms reaching it, the minimum renamed digit string.
    Two puzzles have the same canonical form exactly when one is a transform of the other.
    """
    n = shape.n
    grid = np.asarray(puzzle).reshape(n, n).astype(np.int64)
    row_p = _line_perms(n // shape.r, shape.r)  # (R, n)
    col_p = _line_perms(n // shape.c, shape.c)  # (C, n)
    r_all, c_all = _pairs(len(row_p), len(col_p))
    weights = 1 << np.arange(n - 1, -1, -1, dtype=np.int64)  # first column is the high bit
    grids = [grid, grid.T] if shape.r == shape.c else [grid]
    best_key, best = None, []
    for ti, g in enumerate(grids):
        mask = (g > 0).astype(np.int64)
        # bits of source row k under column permutation c: (C, n)
        row_bits = np.einsum("cjk,j->ck", mask.T[col_p], weights)
        # lexicographic minimum, row by row, over the shrinking set of surviving (row, col) perms
        r_idx, c_idx, key = r_all, c_all, []
        for i in range(n):
            vals = row_bits[c_idx, row_p[r_idx, i]]
            m = vals.min()
            keep = vals == m
            r_idx, c_idx = r_idx[keep], c_idx[keep]
            key.append(int(m))
        key = tuple(key)
        if best_key is None or key < best_key:
            best_key, best = key, [(ti, r, c) for r, c in zip(r_idx, c_idx)]
        elif key == best_key:
            best += [(ti, r, c) for r, c in zip(r_idx, c_idx)]
    cands = np.stack([grids[ti][row_p[r]][:, col_p[c]].reshape(-1) for ti, r, c in best])
    relabelled = _relabel(cands)
    order = np.lexsort(relabelled.T[::-1])
    return "".join(str(int(v)) for v in relabelled[order[0]])
