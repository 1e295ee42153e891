"""ARC as a teacher data source (`tdrm/tasks/sudoku.py` describes the interface): the training rows
of an `arc/dataset.py` set in a seeded order per epoch, PAD positions of the labels ignored by the
loss (the reference's ignore label), each row's (task, augmentation) id for the puzzle-embedding
table; validation = pass@2 on the dev tasks' held-out test inputs (`arc/evaluate.py`: predictions
on every augmentation, inverted, voted)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...rng import ARC_TEACHER, stream
from .dataset import load_set
from .grids import PAD, VOCAB

IGNORE = -100


class ArcRows:
    """Training rows in a fresh seeded order every epoch; resumable."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, ids: np.ndarray, seed: int):
        self.inputs, self.ids = inputs.astype(np.int64), ids.astype(np.int64)
        self.labels = np.where(labels == PAD, IGNORE, labels).astype(np.int64)
        self.rng = stream(seed, ARC_TEACHER)
        self.order, self.pos, self.epoch = self.rng.permutation(len(inputs)), 0, 0

    def next(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.empty(k, dtype=np.int64)
        for i in range(k):
            if self.pos == len(self.order):
                self.order, self.pos, self.epoch = self.rng.permutation(len(self.inputs)), 0, self.epoch + 1
            idx[i] = self.order[self.pos]
            self.pos += 1
        return self.inputs[idx], self.labels[idx], self.ids[idx]

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": self.order.copy(), "pos": self.pos, "epoch": self.epoch}

    def load_state(self, st: dict) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.order, self.pos, self.epoch = np.asarray(st["order"]), int(st["pos"]), int(st["epoch"])


class ArcTeacherData:
    vocab = VOCAB

    def __init__(self, arc_dir: str | Path):
        self.arc = load_set(arc_dir)
        self.cells = self.arc.size ** 2
        self.puzzles = self.arc.puzzles
        self.meta = {"task": "arc", "version": self.arc.version, "size": self.arc.size,
                     "cells": self.cells, "vocab": VOCAB,
                     "tasks": {s: len(t) for s, t in self.arc.tasks.items()}, "puzzles": self.puzzles,
                     "train_rows": int(len(self.arc.train.inputs))}
        self.val_n = len(self.arc.tasks["dev"])

    def stream(self, seed: int, augment: bool) -> ArcRows:
        """`augment` is unused: the set's augmentations are fixed rows, each with its own puzzle id."""
        t = self.arc.train
        return ArcRows(t.inputs, t.labels, t.puzzle_ids, seed)

    def validate(self, model, batch_size: int, device) -> float:
        """pass@2 (ARC Prize scoring) on the dev tasks."""
        from .evaluate import evaluate_split
        return evaluate_split(model, self.arc, "dev", batch_size, device)["pass@2"]
