"""ARC scoring (METHOD.md section 6) as pure functions: voting over augmented predictions, pass@K
with the ARC Prize rule, and the strict all-inputs rule beside it.

ARC Prize: a task's score is the fraction of its test inputs solved within K attempts (K = 2); a
set's score is the mean over tasks. Strict: a task counts 1 only when every test input is solved.
"""
from __future__ import annotations

import numpy as np


def _key(grid: np.ndarray) -> tuple:
    g = np.asarray(grid)
    return g.shape, g.astype(np.int8).tobytes()


def vote(predictions: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
    """Distinct predicted grids ranked by how many (augmented) predictions agree on them, ties broken
    by the higher mean confidence (the halting head's q), then by first appearance."""
    groups: dict[tuple, list] = {}
    for i, (grid, conf) in enumerate(predictions):
        k = _key(grid)
        if k not in groups:
            groups[k] = [np.asarray(grid), [], i]
        groups[k][1].append(float(conf))
    ranked = sorted(groups.values(), key=lambda g: (-len(g[1]), -float(np.mean(g[1])), g[2]))
    return [g[0] for g in ranked]


def solved_within(attempts: list[np.ndarray], truth: np.ndarray, k: int) -> bool:
    """Whether one of the first k attempts equals the true grid (shape and every cell)."""
    t = _key(truth)
    return any(_key(a) == t for a in attempts[:k])


def task_scores(attempts: dict[str, list[list[np.ndarray]]], truths: dict[str, list[np.ndarray]], k: int
                ) -> dict[str, float]:
    """task id -> fraction of its test inputs solved within k attempts (a task without attempts: 0)."""
    out = {}
    for tid, ts in truths.items():
        tries = attempts.get(tid, [[] for _ in ts])
        if len(tries) != len(ts):
            raise ValueError(f"task {tid}: {len(tries)} attempt lists for {len(ts)} test inputs")
        out[tid] = sum(solved_within(a, t, k) for a, t in zip(tries, ts)) / len(ts)
    return out


def summarize(attempts: dict[str, list[list[np.ndarray]]], truths: dict[str, list[np.ndarray]]) -> dict:
    """pass@1 and pass@2 (ARC Prize: mean over tasks of the solved fraction of test inputs), the
    strict all-inputs pass@2, and the counts they rest on."""
    p1, p2 = task_scores(attempts, truths, 1), task_scores(attempts, truths, 2)
    n_inputs = sum(len(t) for t in truths.values())
    solved2 = sum(round(p2[t] * len(truths[t])) for t in truths)
    return {"tasks": len(truths), "test_inputs": n_inputs,
            "pass@1": float(np.mean(list(p1.values()))) if p1 else 0.0,
            "pass@2": float(np.mean(list(p2.values()))) if p2 else 0.0,
            "pass@2_strict": float(np.mean([v == 1.0 for v in p2.values()])) if p2 else 0.0,
            "inputs_solved@2": int(solved2)}
