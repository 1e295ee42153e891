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


@torch.no_grad()
def teacher_pass_by_step(model, arc: ArcSet, split: str, batch_size: int = 64, device="cpu") -> list[float]:
    """The teacher's pass@2 on a held-out split when its answer is read after each supervision step
    k = 1..N_sup (voted over augmentations, the halting q at that step as tie-break)."""
    model.eval()
    ex = arc.held_out[split]
    canv, qs = [], []
    for i in range(0, len(ex.inputs), batch_size):
        tokens = torch.as_tensor(ex.inputs[i:i + batch_size].astype(np.int64), device=device)
        ids = torch.as_tensor(ex.puzzle_ids[i:i + batch_size].astype(np.int64), device=device)
        tr = model.trace(tokens, keep_states=False, puzzle_ids=ids)
        canv.append(tr.logits.argmax(-1).cpu().numpy())  # (K, b, P)
        qs.append(tr.q.float().cpu().numpy())  # (K, b)
    if not canv:
        return [0.0] * model.cfg.n_sup
    canv, qs = np.concatenate(canv, 1), np.concatenate(qs, 1)
    return [summarize(attempts_from(arc, split, canv[k], qs[k]), arc.truths[split])["pass@2"]
            for k in range(canv.shape[0])]


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


def condition(ex: Examples, rows: slice, device) -> torch.Tensor:
    """A TDRM's puzzle input for held-out rows: the input canvas tokens and the puzzle id last (B, P + 1)."""
    return torch.cat([torch.as_tensor(ex.inputs[rows].astype(np.int64), device=device),
                      torch.as_tensor(ex.puzzle_ids[rows].astype(np.int64), device=device)[:, None]], dim=1)


@torch.no_grad()
def tdrm_predict(model, codec, schedule, ex: Examples, steps: int, seed: int, batch_size: int = 64, device="cpu"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One TDRM sample per row (deterministic DDIM, `steps` denoiser calls, starting noise from a
    generator seeded `seed`, drawn batch after batch), decoded through the frozen teacher's lm_head:
    (canvases (M, P) tokens of the final row, confidence (M,) = the mean top-1 minus top-2
    probability over the canvas, the vote's tie-break in place of the teacher's halting q, and
    canvases decoded at every generated row (M, K, P))."""
    from ...diffusion.samplers import top_margin
    from ...diffusion.sampling import generate
    gen = torch.Generator().manual_seed(seed)
    canvases, conf, rows_ = [], [], []
    for i in range(0, len(ex.inputs), batch_size):
        x = generate(model, condition(ex, slice(i, i + batch_size), device), schedule, sampler="ddim", steps=steps,
                     eta=0.0, generator=gen, confidence=codec.cell_confidence)
        logits = codec.answer_logits(x)  # (b, P, V)
        canvases.append(logits.argmax(-1).cpu().numpy())
        conf.append(top_margin(logits).mean(-1).float().cpu().numpy())
        rows_.append(codec.step_logits(x).argmax(-1).cpu().numpy())
    if not canvases:
        p = ex.inputs.shape[1]
        return np.zeros((0, p), dtype=np.int64), np.zeros(0), np.zeros((0, model.K, p), dtype=np.int64)
    return np.concatenate(canvases), np.concatenate(conf), np.concatenate(rows_)


def _ci(solved: list[bool]) -> list[float]:
    from ...eval.metrics import wilson
    return list(wilson(sum(solved), len(solved)))


def tdrm_vs_teacher(model, codec, schedule, arc: ArcSet, split: str = "test", steps: tuple[int, ...] = (20,),
                    seed: int = 0, batch_size: int = 64, device="cpu", control=None) -> dict:
    """TDRM on a held-out split beside its teacher and the trivial baseline, each voted over the
    augmentations of every test input (`attempts_from`) and scored with the ARC Prize rule:
    pass@1 / pass@2 / strict for the teacher, the baseline and TDRM at each of `steps` denoiser
    calls (and, with `control` = (model, codec, schedule), the K = 1 control at the last), Wilson
    intervals over test inputs, exact McNemar tests paired over test inputs (solved within 2
    attempts): TDRM (at the last of `steps`) against the teacher, the baseline and the control;
    and TDRM's pass@2 when its answer is decoded at each generated row k."""
    from ...eval.metrics import mcnemar_exact
    if not steps:
        raise ValueError("evaluate.tdrm_steps must name at least one number of denoiser calls")
    truths = arc.truths[split]
    ex = arc.held_out[split]
    t_canv, t_q = predict(codec.teacher, ex, batch_size, device)
    att = {"teacher": attempts_from(arc, split, t_canv, t_q), "baseline": baseline_attempts(arc, split)}
    out: dict = {"version": arc.version, "split": split, "canvas": arc.size, "tasks": len(truths),
                 "test_inputs": sum(len(v) for v in truths.values())}
    by_steps, rows_final = [], None
    for s in steps:
        canv, conf, rows_ = tdrm_predict(model, codec, schedule, ex, s, seed, batch_size, device)
        att[f"tdrm@{s}"] = attempts_from(arc, split, canv, conf)
        r = summarize(att[f"tdrm@{s}"], truths)
        solved = _solved(att[f"tdrm@{s}"], truths)
        lo, hi = _ci(solved)
        by_steps.append({"sampling_steps": s, "exact_accuracy": r["pass@2"], "pass@1": r["pass@1"],
                         "pass@2_strict": r["pass@2_strict"], "inputs_solved@2": sum(solved), "ci_low": lo, "ci_high": hi})
        rows_final, conf_final = rows_, conf
    if control is not None:
        c_model, c_codec, c_sched = control
        canv, conf, _ = tdrm_predict(c_model, c_codec, c_sched, ex, steps[-1], seed, batch_size, device)
        att["control"] = attempts_from(arc, split, canv, conf)
    inputs = {}
    for name, a in att.items():
        inputs[name] = _solved(a, truths)
        out[name] = {**summarize(a, truths), "inputs_ci95@2": _ci(inputs[name])}
    last = f"tdrm@{steps[-1]}"
    out["tdrm"] = out[last]
    out["paired_inputs_tdrm_vs_teacher"] = mcnemar_exact(inputs[last], inputs["teacher"])
    out["paired_inputs_tdrm_vs_baseline"] = mcnemar_exact(inputs[last], inputs["baseline"])
    if control is not None:
        out["paired_inputs_tdrm_vs_control"] = mcnemar_exact(inputs[last], inputs["control"])
    per_row = []
    for k in range(rows_final.shape[1]):
        r = summarize(attempts_from(arc, split, rows_final[:, k], conf_final), truths)
        per_row.append({"step": k + 1, "tdrm_pass@2": r["pass@2"]})
    out["tdrm_pass@2_by_row"] = [r["tdrm_pass@2"] for r in per_row]
    out["accuracy_by_sampling_steps"] = by_steps
    return out
