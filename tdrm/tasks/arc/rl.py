"""ARC for the `rl` stage (issue 16 section 4): rollouts on the set's training rows, rewarded against
their known outputs, and the held-out evaluation before and after RL.

The reward needs no test label: a rollout is a TDRM sample for one training row of the set (a
demonstration pair of any task, or a test pair of a train task, under its augmentation and with its
puzzle id, `ArcSet.train`), and its reward is 1 when the decoded canvas equals that row's output
canvas, plus `dense_weight` times the share of the output's cells (its grid and EOS border, PAD
excluded) that are right. The held-out test outputs of dev and test tasks are never read here: the
rows come from `ArcSet.train` only, whose labels the data stage fills from training pairs. It is not
leave-one-out in the strict sense: the puzzle embedding of a (task, augmentation) was trained on every
demonstration of it, so a rollout is scored on a pair its embedding has seen (the denoiser has no
other input that could hold a pair out). Validation is pass@2 on the dev tasks; the test evaluation
is the `evaluate` stage's TDRM scoring (`evaluate.tdrm_predict`, voted over augmentations, ARC Prize
pass@2) of the model before and after RL, paired over test inputs.
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import ArcSet, load_set
from .evaluate import _ci, _solved, attempts_from, condition, tdrm_predict
from .grids import PAD
from .scoring import summarize


def canvas_reward(pred: torch.Tensor, label: torch.Tensor, dense_weight: float) -> torch.Tensor:
    """(S,) float: 1[pred == label on every canvas position] + dense_weight * the share of the label's
    non-PAD positions (grid and EOS border) that pred gets right. pred, label: (S, P) tokens."""
    if pred.shape != label.shape:
        raise ValueError(f"predicted canvases {tuple(pred.shape)} and labels {tuple(label.shape)} differ in shape")
    if (label < 0).any():
        raise ValueError("a label canvas holds -1 (a held-out row's unknown output): RL rewards training rows only")
    right = pred == label  # (S, P)
    cells = label != PAD
    dense = (right & cells).sum(-1).float() / cells.sum(-1).clamp(min=1).float()
    return right.all(-1).float() + dense_weight * dense


class ArcRollouts:
    """The rows RL samples from (`ArcSet.train`) and their reward; `tokens(idx)` is the denoiser's
    condition (the input canvas and the puzzle id last, (P, N + 1))."""

    def __init__(self, arc: ArcSet, puzzle_rows: int):
        if puzzle_rows != arc.puzzles:
            raise ValueError(f"the TDRM reads {puzzle_rows} puzzle embeddings, the ARC set has {arc.puzzles}: "
                             "RL needs the model distilled from this data directory's teacher")
        self.arc, self.ex = arc, arc.train
        self.size = len(arc.train.inputs)

    def tokens(self, idx: np.ndarray) -> np.ndarray:
        return condition(self.ex, idx, "cpu").numpy()

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.ex.labels[idx].astype(np.int64)


def load_rollouts(data_dir, model) -> ArcRollouts:
    """The rollout rows of an ARC data directory for a TDRM `model` (its puzzle table must match)."""
    table = getattr(model, "puzzle_table", None)
    if table is None:
        raise ValueError("this TDRM has no puzzle-embedding table: it was not distilled from an ARC teacher")
    return ArcRollouts(load_set(data_dir), int(table.shape[0]))


def dev_pass2(model, codec, schedule, arc: ArcSet, steps: int, seed: int, batch_size: int, device) -> float:
    """pass@2 (ARC Prize) of deterministic DDIM samples on the dev tasks, voted over augmentations."""
    canv, conf, _ = tdrm_predict(model, codec, schedule, arc.held_out["dev"], steps, seed, batch_size, device)
    return summarize(attempts_from(arc, "dev", canv, conf), arc.truths["dev"])["pass@2"]


def before_after_arc(models: dict, arc: ArcSet, steps: list[int], rollout_steps: int, seed: int, batch_size: int,
                     device) -> tuple[dict, list[dict]]:
    """The test tasks' pass@2 of the `models` {"before": (model, codec, schedule), "after": ...} at each
    number of `steps` (deterministic DDIM), with Wilson intervals over test inputs, and the exact McNemar
    test paired over test inputs (solved within 2 attempts) at `rollout_steps`. The rows and metrics use
    the Sudoku stage's names: `exact_accuracy` is pass@2 here, and n counts test inputs."""
    from ...eval.metrics import mcnemar_exact
    truths, ex = arc.truths["test"], arc.held_out["test"]
    rows, at = [], {}
    for s in steps:
        row = {"sampling_steps": s}
        for name, (m, codec, sched) in models.items():
            canv, conf, _ = tdrm_predict(m, codec, sched, ex, s, seed, batch_size, device)
            att = attempts_from(arc, "test", canv, conf)
            solved = _solved(att, truths)
            r = summarize(att, truths)
            row[f"{name}_exact_accuracy"] = r["pass@2"]
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _ci(solved)
            if s == rollout_steps:
                at[name] = {**r, "solved": solved}
        rows.append(row)
    b, a = at["before"], at["after"]
    n = len(b["solved"])
    metrics = {"n": n, "task": "arc", "version": arc.version, "tasks": len(truths), "sampling_steps": rollout_steps,
               "before": {"exact_accuracy": b["pass@2"], "ci95": _ci(b["solved"]), "pass@1": b["pass@1"],
                          "pass@2_strict": b["pass@2_strict"], "inputs_solved@2": b["inputs_solved@2"]},
               "after": {"exact_accuracy": a["pass@2"], "ci95": _ci(a["solved"]), "pass@1": a["pass@1"],
                         "pass@2_strict": a["pass@2_strict"], "inputs_solved@2": a["inputs_solved@2"]},
               "difference_points": 100 * (a["pass@2"] - b["pass@2"]),
               "paired_after_vs_before": mcnemar_exact(a["solved"], b["solved"]),
               "accuracy_by_sampling_steps": rows}
    return metrics, rows
