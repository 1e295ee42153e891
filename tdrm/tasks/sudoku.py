"""Sudoku as a teacher data source (the task seam of issue 16, teacher side).

A teacher data source gives `train_teacher` what it needs and nothing task-specific leaks past it:
`cells`, `vocab`, `puzzles` (rows of the puzzle-embedding table: 1 = no puzzle ids), `meta` (what
the data is, for the resume key and the checkpoint), `val_n`, `stream(seed, augment)` (an endless,
resumable stream whose `next(k)` gives model-ready tokens (k, C), labels (k, C) with -100 where
the loss ignores a position, and puzzle ids (k,)), and `validate(model, batch_size, device)` (the
validation score logged during training). `tdrm/tasks/arc/teacher_data.py` is the ARC source.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.board import to_tokens
from ..data.dataset import load_meta, load_split
from ..data.stream import PuzzleStream


class SudokuTokens:
    """`PuzzleStream` (seeded order, on-the-fly symmetries) as tokens; puzzle id 0 for every puzzle."""

    def __init__(self, stream: PuzzleStream):
        self.inner = stream

    def next(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, s = self.inner.next(k)
        return to_tokens(p), to_tokens(s), np.zeros(k, dtype=np.int64)

    def state(self) -> dict:
        return self.inner.state()

    def load_state(self, st: dict) -> None:
        self.inner.load_state(st)


class SudokuTeacherData:
    """The Sudoku dataset directory of the `data` stage (train and val splits)."""

    puzzles = 1

    def __init__(self, data_dir: str | Path, eval_limit: int | None = None):
        self.meta = load_meta(data_dir)
        self.train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        self.shape = self.train.shape
        self.cells, self.vocab = self.shape.cells, self.shape.vocab
        self.val = val.take(np.arange(min(eval_limit, len(val)))) if eval_limit else val
        self.val_n = len(self.val)

    def stream(self, seed: int, augment: bool) -> SudokuTokens:
        return SudokuTokens(PuzzleStream(self.train.puzzles, self.train.solutions, self.shape, seed, augment))

    def validate(self, model, batch_size: int, device) -> float:
        """Exact accuracy after N_sup supervision steps on the validation puzzles."""
        from ..eval.teacher import evaluate
        return evaluate(model, self.val, batch_size, device)["exact_accuracy"]
