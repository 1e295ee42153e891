"""Seeded puzzle generator: a random complete grid, then clues removed while the solution stays unique."""
from __future__ import annotations

import numpy as np

from .board import Shape
from .solver import count_solutions, random_solution


def generate(shape: Shape, rng: np.random.Generator, mode: str = "minimal",
             clues: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (puzzle, solution), both int8 (L,) with 0 = blank.

    mode `minimal`: try every cell once in random order and remove its clue when the puzzle
    stays unique, so at the end no single clue can be removed.
    mode `clues`: stop as soon as `clues` givens remain; if the random removal order gets stuck
    above the target, start again from a new grid (at most 50 tries).
    """
    if mode not in ("minimal", "clues"):
        raise ValueError(f"generator mode must be 'minimal' or 'clues', got {mode!r}")
    if mode == "clues" and (clues is None or not 0 < clues <= shape.cells):
        raise ValueError(f"mode 'clues' needs 0 < clues <= {shape.cells}, got {clues}")
    for _ in range(50):
        solution = random_solution(shape, rng)
        puzzle = solution.copy()
        for cell in rng.permutation(shape.cells):
            if mode == "clues" and int((puzzle > 0).sum()) <= clues:
                break
            keep = puzzle[cell]
            puzzle[cell] = 0
            if count_solutions(puzzle, shape) != 1:
                puzzle[cell] = keep
        if mode == "minimal" or int((puzzle > 0).sum()) <= clues:
            return puzzle, solution
    raise RuntimeError(f"could not reach {clues} clues on a {shape.name} board in 50 tries")


def generate_many(shape: Shape, count: int, seed: int, mode: str = "minimal",
                  clues: int | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`count` puzzles, (count, L) each; puzzle i depends only on (seed, i)."""
    from tqdm import tqdm

    puzzles = np.zeros((count, shape.cells), dtype=np.int8)
    solutions = np.zeros_like(puzzles)
    for i in tqdm(range(count), desc=f"generate {shape.name}", disable=not progress, mininterval=2):
        rng = np.random.default_rng([seed, i])
        puzzles[i], solutions[i] = generate(shape, rng, mode, clues)
    return puzzles, solutions
