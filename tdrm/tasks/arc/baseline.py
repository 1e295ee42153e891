"""The trivial ARC baseline (issue 16 section 3): the output is a dihedral transform of the input
followed by a colour map, chosen to agree with every demonstration pair.

For each of the 8 dihedral transforms d (identity first), the colour map is read off the
demonstrations (transformed input cell colour -> output cell colour); (d, map) is consistent when
every demonstration's transformed input has its output's shape and no input colour needs two output
colours. Each consistent candidate predicts the transformed test input, recoloured (a colour the
demonstrations never showed keeps its colour); distinct predictions in that order are the attempts.
"""
from __future__ import annotations

import numpy as np

from .data import Task
from .grids import dihedral


def consistent_map(pairs, d: int) -> np.ndarray | None:
    """The colour map (10,) (-1 = unseen) that makes `dihedral(input, d)` -> output on every pair, or None."""
    cmap = np.full(10, -1, dtype=np.int64)
    for p in pairs:
        x = dihedral(p.input, d)
        if x.shape != p.output.shape:
            return None
        for a, b in zip(x.reshape(-1), p.output.reshape(-1)):
            if cmap[a] == -1:
                cmap[a] = b
            elif cmap[a] != b:
                return None
    return cmap


def predict(task: Task, attempts: int = 2) -> list[list[np.ndarray]]:
    """Per test input, up to `attempts` distinct predicted grids (none when no candidate is consistent)."""
    cands = [(d, m) for d in range(8) if (m := consistent_map(task.train, d)) is not None]
    out = []
    for p in task.test:
        preds, seen = [], set()
        for d, m in cands:
            x = dihedral(p.input, d)
            full = np.where(m >= 0, m, np.arange(10))  # unseen colours keep their colour
            g = np.ascontiguousarray(full[x])
            k = (g.shape, g.tobytes())
            if k not in seen:
                seen.add(k)
                preds.append(g)
            if len(preds) == attempts:
                break
        out.append(preds)
    return out


def evaluate(version: str, split: str = "eval") -> dict:
    """The baseline on a data version's split: ARC Prize pass@1 / pass@2 over its test inputs (the
    evaluation split's held-out inputs, or the training tasks' test pairs), strict pass@2, counts."""
    from .data import load
    from .scoring import summarize
    tasks = load(version)[split]
    missing = [tid for tid, t in tasks.items() for p in t.test if p.output is None]
    if missing:
        raise ValueError(f"{version} {split}: {len(missing)} test inputs have no output to score against")
    attempts = {tid: predict(t) for tid, t in tasks.items()}
    truths = {tid: [p.output for p in t.test] for tid, t in tasks.items()}
    return {"version": version, "split": split, **summarize(attempts, truths),
            "tasks_with_a_candidate": sum(any(a) for a in attempts.values())}
