"""An endless, seeded, resumable stream of training puzzles with on-the-fly augmentation."""
from __future__ import annotations

import numpy as np

from .augment import apply_transform, random_transform
from .board import Shape
from ..rng import TEACHER_STREAM, stream


class PuzzleStream:
    """Draws puzzles epoch by epoch in a seeded random order; `state()` / `load_state()` resume it."""

    def __init__(self, puzzles: np.ndarray, solutions: np.ndarray, shape: Shape, seed: int,
                 augment: bool = True):
        self.puzzles, self.solutions, self.shape, self.augment = puzzles, solutions, shape, augment
        self.rng = stream(seed, TEACHER_STREAM)
        self.order = self.rng.permutation(len(puzzles))
        self.pos = 0
        self.epoch = 0

    def next(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k puzzles and solutions (k, C)."""
        p = np.empty((k, self.puzzles.shape[1]), dtype=self.puzzles.dtype)
        s = np.empty_like(p)
        for i in range(k):
            if self.pos == len(self.order):
                self.order = self.rng.permutation(len(self.puzzles))
                self.pos, self.epoch = 0, self.epoch + 1
            j = self.order[self.pos]
            self.pos += 1
            if self.augment:
                t = random_transform(self.shape, self.rng)
                p[i] = apply_transform(self.puzzles[j], self.shape, t)
                s[i] = apply_transform(self.solutions[j], self.shape, t)
            else:
                p[i], s[i] = self.puzzles[j], self.solutions[j]
        return p, s

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": self.order.copy(), "pos": self.pos,
                "epoch": self.epoch}

    def load_state(self, st: dict) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.order, self.pos, self.epoch = np.asarray(st["order"]), int(st["pos"]), int(st["epoch"])
