"""Exact Sudoku solver: bitmask candidates, naked and hidden singles, fewest-candidates branching.

`solve` searches for up to `limit` solutions (2 proves uniqueness) and counts its guesses:
every time the search fixes a branching cell to one of its several candidates counts one.
That count, taken over the whole search that finds the solution and proves it unique, is the
difficulty rating of the shared Sudoku-Extreme-format CSV files (it reproduces them exactly).
Pure Python ints as bitmasks: digit d is bit (d - 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .board import PuzzleError, Shape, _units, conflicts, peers, shape_for_length


@dataclass(frozen=True)
class Result:
    solutions: list[np.ndarray]
    guesses: int

    @property
    def count(self) -> int:
        return len(self.solutions)

    @property
    def unique(self) -> bool:
        return len(self.solutions) == 1


_BIT = {1 << d: d + 1 for d in range(9)}


class _Ctx:
    """Static tables for one shape."""

    def __init__(self, shape: Shape):
        self.n = shape.n
        self.full = (1 << shape.n) - 1
        self.peers = peers(shape.r, shape.c)
        self.units = _units(shape.r, shape.c)
        self.popcount = [bin(m).count("1") for m in range(1 << shape.n)]


_CTX: dict[Shape, _Ctx] = {}


def _ctx(shape: Shape) -> _Ctx:
    if shape not in _CTX:
        _CTX[shape] = _Ctx(shape)
    return _CTX[shape]


def _assign(cand: list[int], cell: int, bit: int, ctx: _Ctx) -> bool:
    """Fix `cell` to `bit` and propagate naked singles; False on contradiction."""
    stack = [(cell, bit)]
    peers_ = ctx.peers
    while stack:
        i, b = stack.pop()
        if cand[i] & b == 0:
            return False
        cand[i] = b
        for p in peers_[i]:
            m = cand[p]
            if m & b:
                m &= ~b
                if m == 0:
                    return False
                cand[p] = m
                if m & (m - 1) == 0:
                    stack.append((p, m))
    return True


def _propagate(cand: list[int], ctx: _Ctx) -> bool:
    """Apply hidden singles until nothing changes; False on contradiction."""
    full = ctx.full
    units_ = ctx.units
    changed = True
    while changed:
        changed = False
        for u in units_:
            once = twice = 0
            for i in u:
                m = cand[i]
                twice |= once & m
                once |= m
            if once != full:
                return False
            hidden = once & ~twice
            while hidden:
                b = hidden & -hidden
                hidden ^= b
                for i in u:
                    if cand[i] & b:
                        if cand[i] != b:
                            if not _assign(cand, i, b, ctx):
                                return False
                            changed = True
                        break
    return True


def _search(cand, ctx, limit, out, counter):
    if not _propagate(cand, ctx):
        return
    best, best_count = -1, 99
    pc = ctx.popcount
    for i, m in enumerate(cand):
        k = pc[m]
        if 1 < k < best_count:
            best, best_count = i, k
            if k == 2:
                break
    if best < 0:
        out.append(cand)
        return
    m = cand[best]
    while m:
        b = m & -m
        m ^= b
        counter[0] += 1
        child = cand[:]
        if _assign(child, best, b, ctx):
            _search(child, ctx, limit, out, counter)
            if len(out) >= limit:
                return


def solve(puzzle: np.ndarray | str, shape: Shape | None = None, limit: int = 2) -> Result:
    """Find up to `limit` solutions of a puzzle (array with 0 = blank, or a string).

    Raises PuzzleError if the givens already conflict.
    """
    if isinstance(puzzle, str):
        from .board import parse
        puzzle = parse(puzzle, shape)
    puzzle = np.asarray(puzzle).reshape(-1)
    shape = shape or shape_for_length(puzzle.size)
    ctx = _ctx(shape)
    clash = conflicts(puzzle, shape)
    if clash:
        i, j = clash[0]
        raise PuzzleError(f"contradictory givens: cells {i} and {j} in one unit both hold {puzzle[i]}")
    cand = [ctx.full] * shape.cells
    for i, v in enumerate(puzzle.tolist()):
        if v and not _assign(cand, i, 1 << (v - 1), ctx):
            return Result([], 0)  # the givens force a contradiction: no solution
    out: list[list[int]] = []
    counter = [0]
    _search(cand, ctx, limit, out, counter)
    sols = [np.array([_BIT[m] for m in s], dtype=np.int8) for s in out]
    return Result(sols, counter[0])


def count_solutions(puzzle: np.ndarray, shape: Shape, limit: int = 2) -> int:
    try:
        return solve(puzzle, shape, limit).count
    except PuzzleError:
        return 0


def random_solution(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """A uniformly-seeded random complete grid: branch on random candidates in random order."""
    ctx = _ctx(shape)
    cand = [ctx.full] * shape.cells

    def rec(c):
        if not _propagate(c, ctx):
            return None
        open_ = [i for i, m in enumerate(c) if m & (m - 1)]
        if not open_:
            return c
        pc = ctx.popcount
        k = min(pc[c[i]] for i in open_)
        choices = [i for i in open_ if pc[c[i]] == k]
        cell = choices[int(rng.integers(len(choices)))]
        bits = [1 << d for d in range(shape.n) if c[cell] >> d & 1]
        for j in rng.permutation(len(bits)):
            child = c[:]
            if _assign(child, cell, bits[j], ctx):
                got = rec(child)
                if got is not None:
                    return got
        return None

    sol = rec(cand)
    assert sol is not None
    return np.array([_BIT[m] for m in sol], dtype=np.int8)
