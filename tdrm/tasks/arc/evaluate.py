"""A teacher on ARC held-out inputs: predictions on every augmentation of each test input, mapped
back to the task's frame, voted (count, then the halting head's q), scored with the ARC Prize rule
(`scoring.summarize`: pass@1, pass@2, strict); `teacher_vs_baseline` sets it beside the trivial
baseline on the same tasks, paired."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import ArcSet, Examples, invert_prediction
from .scoring import summarize, task_scores, vote


@torch.no_grad()
def predict(model, ex: Examples, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """(canvases (M, P) tokens after the last supervision step, halting logits q (M,)) of the rows."""
    model.eval()
    canvases, qs = [], []
    for i in range(0, len(ex.inputs), batch_size):
        tokens = torch.as_tensor(ex.inputs[i:i + batch_size].astype(np.int64), device=device)
        ids = torch.as_tensor(ex.puzzle_ids[i:i + batch_size].astype(np.int64), device=device)
        tr = model.trace(tokens, keep_states=False, puzzle_ids=ids)
        canvases.append(tr.logits[-1].argmax(-1).cpu().numpy())  # (b, P)
        qs.append(tr.q[-1].float().cpu().numpy())
    if not canvases:
        return np.zeros((0, ex.inputs.shape[1]), dtype=np.int64), np.zeros(0)
    return np.concatenate(canvases), np.concatenate(qs)


def attempts_from(arc: ArcSet, split: str, canvases: np.ndarray, q: np.ndarray) -> dict[str, list[list[np.ndarray]]]:
    """task id -> per test input, the distinct predicted grids ranked by votes over augmentations."""
    ex = arc.held_out[split]
    votes: dict[tuple[str, int], list] = {}
    for r in range(len(canvases)):
        key = (arc.task_ids[int(ex.task[r])], int(ex.pair[r]))
        votes.setdefault(key, []).append((invert_prediction(arc, ex.puzzle_ids[r], canvases[r]), float(q[r])))
    return {tid: [vote(votes.get((tid, i), [])) for i in range(len(arc.truths[split][tid]))]
            for tid in arc.tasks[split]}


def evaluate_split(model, arc: ArcSet, split: str, batch_size: int = 64, device="cpu") -> dict:
    """pass@1, pass@2, strict pass@2 and counts of a split's tasks (`summarize`), with the data version."""
    canvases, q = predict(model, arc.held_out[split], batch_size, device)
    return {"version": arc.version, "split": split,
            **summarize(attempts_from(arc, split, canvases, q), arc.truths[split])}


def baseline_attempts(arc: ArcSet, split: str) -> dict[str, list[list[np.ndarray]]]:
    """The trivial baseline's attempts (`baseline.predict`) on a split's tasks, read from the data
    version the set was built from."""
    from .baseline import predict as baseline_predict
    from .data import load
    tasks = load(arc.version)["train"]
    return {tid: baseline_predict(tasks[tid]) for tid in arc.tasks[split]}


def _solved(attempts: dict, truths: dict, k: int = 2) -> list[bool]:
    """Per test input (tasks in `truths` order), whether it is solved within k attempts."""
    from .scoring import solved_within
    return [solved_within(a, t, k) for tid, ts in truths.items() for a, t in zip(attempts[tid], ts)]


def teacher_vs_baseline(model, arc: ArcSet, split: str = "test", batch_size: int = 64, device="cpu") -> dict:
    """The teacher (voted over augmentations) and the trivial baseline on the same held-out tasks:
    ARC Prize pass@1 / pass@2 and the strict rule for each, Wilson 95% intervals over test inputs,
    and exact McNemar tests paired over test inputs (solved within 2 attempts) and over tasks
    (strict: every test input solved)."""
    from ...eval.metrics import mcnemar_exact, wilson
    canvases, q = predict(model, arc.held_out[split], batch_size, device)
    truths = arc.truths[split]
    att = {"teacher": attempts_from(arc, split, canvases, q), "baseline": baseline_attempts(arc, split)}
    out: dict = {"version": arc.version, "split": split, "canvas": arc.size}
    inputs, strict = {}, {}
    for name, a in att.items():
        r = summarize(a, truths)
        inputs[name] = _solved(a, truths)
        strict[name] = [v == 1.0 for v in task_scores(a, truths, 2).values()]  # every test input solved
        lo, hi = wilson(sum(inputs[name]), len(inputs[name]))
        out[name] = {**r, "inputs_ci95@2": [lo, hi]}
    out["paired_inputs_teacher_vs_baseline"] = mcnemar_exact(inputs["teacher"], inputs["baseline"])
    out["paired_tasks_strict_teacher_vs_baseline"] = mcnemar_exact(strict["teacher"], strict["baseline"])
    return out
