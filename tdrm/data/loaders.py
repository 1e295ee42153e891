"""Loaders for puzzle files: the Sudoku-Extreme CSV format and plain puzzle lists.

CSV: header `source,question,answer,rating`, 81 (or 16/36) characters, `.` blank.
Lists: one puzzle per line, either `<puzzle>` or `<id> <puzzle> [rating]` (Sudoku Exchange).
Puzzles without an answer are solved (and their rating computed) by the exact solver.
Every problem is reported as `file:line: problem`; with `skip_bad=True` bad rows are dropped
and counted instead.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .board import PuzzleError, Shape, conflicts, is_solution, parse, shape_for_length
from .solver import solve


@dataclass
class PuzzleSet:
    """Puzzles (M, L) and solutions (M, L), int8 with 0 = blank; ratings (M,) (-1 = unknown)."""

    shape: Shape
    puzzles: np.ndarray
    solutions: np.ndarray
    ratings: np.ndarray
    sources: list[str] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.puzzles)

    def take(self, idx: np.ndarray) -> "PuzzleSet":
        return PuzzleSet(self.shape, self.puzzles[idx], self.solutions[idx], self.ratings[idx],
                         [self.sources[i] for i in idx])


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_rows(path: Path):
    """Yield (line_no, source, question, answer or None, rating or None)."""
    with open(path, newline="") as f:
        first = f.readline()
        if first.lower().startswith("source,question"):
            reader = csv.reader(f)
            for k, row in enumerate(reader, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 3:
                    yield k, None, row, None, None
                    continue
                rating = row[3] if len(row) > 3 else None
                yield k, row[0], row[1], row[2] or None, rating
            return
        f.seek(0)
        for k, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) == 1:
                yield k, path.stem, parts[0], None, None
            else:
                yield k, f"{path.stem}:{parts[0]}", parts[1], None, parts[2] if len(parts) > 2 else None


def check_row(question: str, answer: str | None, shape: Shape | None, check_unique: bool
              ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Parse and verify one puzzle; returns (puzzle, solution, rating or None). Raises PuzzleError."""
    puzzle = parse(question, shape)
    shape = shape or shape_for_length(puzzle.size)
    if conflicts(puzzle, shape):
        i, j = conflicts(puzzle, shape)[0]
        raise PuzzleError(f"contradictory givens: cells {i} and {j} both hold {puzzle[i]}")
    rating = None
    if answer is None or check_unique:
        res = solve(puzzle, shape)
        if res.count == 0:
            raise PuzzleError("puzzle has no solution")
        if res.count > 1:
            raise PuzzleError("puzzle has several solutions")
        solution, rating = res.solutions[0], res.guesses
        if answer is not None and not np.array_equal(parse(answer, shape), solution):
            raise PuzzleError("answer does not match the puzzle's unique solution")
    else:
        solution = parse(answer, shape)
        if not is_solution(puzzle, solution, shape):
            raise PuzzleError("answer is not a valid solution of the puzzle")
    return puzzle, solution, rating


def load_puzzles(path: str | Path, *, skip_bad: bool = False, check_unique: bool = False,
                 limit: int | None = None, shape: Shape | None = None) -> PuzzleSet:
    """Load a CSV or list file. `check_unique` runs the solver on rows that carry an answer too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"puzzle file not found: {path}")
    puzzles, solutions, ratings, sources, errors = [], [], [], [], []
    for line, source, question, answer, rating in _raw_rows(path):
        if limit is not None and len(puzzles) >= limit:
            break
        try:
            if source is None:
                raise PuzzleError(f"expected source,question,answer,rating; got {len(question)} fields")
            if shape is None:
                shape = shape_for_length(len(question.strip()))
            p, s, r = check_row(question, answer, shape, check_unique)
            if rating not in (None, ""):
                try:
                    r = int(float(rating))
                except ValueError:
                    raise PuzzleError(f"rating {rating!r} is not a number") from None
        except PuzzleError as e:
            msg = f"{path}:{line}: {e}"
            if not skip_bad:
                raise PuzzleError(msg) from None
            errors.append(msg)
            continue
        puzzles.append(p)
        solutions.append(s)
        ratings.append(-1 if r is None else r)
        sources.append(source)
    if not puzzles:
        raise PuzzleError(f"{path}: no usable puzzles ({len(errors)} bad rows)")
    return PuzzleSet(shape, np.stack(puzzles), np.stack(solutions), np.array(ratings, np.int32),
                     sources, skipped=len(errors), errors=errors)


def write_csv(path: str | Path, ps: PuzzleSet) -> None:
    """Write the Sudoku-Extreme CSV format (`.` blank)."""
    from .board import format_board
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "question", "answer", "rating"])
        for src, p, s, r in zip(ps.sources, ps.puzzles, ps.solutions, ps.ratings):
            w.writerow([src, format_board(p), format_board(s), int(r)])
