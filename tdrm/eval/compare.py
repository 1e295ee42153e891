"""Teacher against TDRM on the same test puzzles: accuracy with CIs, paired test, cost, sweeps."""
from __future__ import annotations

import time

import numpy as np
import torch
from einops import rearrange

from ..config import Evaluate
from ..dist import SINGLE, World, batch_shares, gather_rows
from ..data.board import logits_to_digits, to_tokens
from ..data.loaders import PuzzleSet
from ..checkpoint import CheckpointError
from ..checkpoint import load_tdrm
from .metrics import mcnemar_exact
from .tdrm import evaluate_tdrm, inference_cost
from .teacher import score


@torch.no_grad()
def teacher_run(teacher, ps: PuzzleSet, batch_size: int, device, steps: int,
                world: World = SINGLE) -> tuple[dict, torch.Tensor]:
    """Teacher metrics over `steps` supervision steps and its y states at the cells (M, K, L, D).
    The metrics' `correct` (M,) and `step_boards` (M, K, L), the decoded board after each step, are
    per-puzzle arrays (not for JSON).
    Data parallel (`world`): the metrics are of all puzzles, the states those of this rank's rows
    `dist.rows` of every batch (what `evaluate_tdrm` pairs them with)."""
    t0 = time.perf_counter()
    preds, ys = [], []
    pre = teacher.cfg.prefix
    for _, _, sl in batch_shares(len(ps), batch_size, world):
        part = ps.puzzles[sl]
        if not len(part):  # a rank's empty share of a short batch
            preds.append(gather_rows(torch.zeros((0, steps, ps.puzzles.shape[1]), dtype=torch.int8), world))
            continue
        tr = teacher.trace(torch.as_tensor(to_tokens(part), device=device), steps)
        pred = logits_to_digits(tr.logits).clamp_min(0).to(torch.int8)  # (K, b, L)
        preds.append(gather_rows(rearrange(pred, "k b l -> b k l"), world).cpu())  # (B, K, L), every rank's rows
        ys.append(tr.y[:, :, pre:].transpose(0, 1).cpu())  # (b, K, L, D)
    preds = rearrange(torch.cat(preds), "m k l -> k m l").numpy()  # (K, M, L) every puzzle
    res = score(preds, ps)
    res["seconds"] = time.perf_counter() - t0
    res["correct"] = (preds[-1] == ps.solutions).all(-1)
    res["step_boards"] = rearrange(preds, "k m l -> m k l")  # (M, K, L) int8 digits after each step
    return res, (torch.cat(ys) if ys else torch.zeros((0, steps, ps.puzzles.shape[1], teacher.cfg.hidden)))


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("correct", "boards", "step_boards")}  # per-puzzle arrays


def _summary(res: dict) -> dict:
    return {"exact_accuracy": res["exact_accuracy"], "ci95": res["ci95"], "n": res["n"]}


def compare(teacher, tdrm_path, test: PuzzleSet, cfg: Evaluate, seed: int, device, *,
            control_path=None, progress: bool = True, world: World = SINGLE) -> tuple[dict, list[dict], list[dict]]:
    """Returns (metrics, accuracy-against-sampling-steps rows, per-supervision-step rows).
    `teacher` must be the one the TDRM checkpoint was distilled from (its embedded copy).
    Data parallel (`world`): every rank evaluates its rows of each batch and gets the one-process result."""
    model, codec, schedule, ck = load_tdrm(tdrm_path, device)
    ours = teacher.state_dict()
    if ck["teacher"]["model"].keys() != ours.keys() or any(
            not torch.equal(v.cpu(), ours[k].cpu()) for k, v in ck["teacher"]["model"].items()):
        raise CheckpointError(f"{tdrm_path} was distilled from another teacher than the one evaluated")
    d = ck["config"]["distill"]
    k = model.K // codec.layout.rows_per_step  # supervision steps
    t_res, t_y = teacher_run(codec.teacher, test, cfg.batch_size, device, k, world)
    common = dict(batch_size=cfg.batch_size, device=device, seed=seed, world=world)
    main = evaluate_tdrm(model, codec, schedule, test, sampler=d["sampler"],
                         steps=d["sample_steps"], eta=d["eta"], samples=1, progress=progress,
                         reference=t_y, **common)
    tokens = torch.as_tensor(to_tokens(test.puzzles[:8]), device=device)
    cost = inference_cost(codec, model, tokens, d["sample_steps"])
    metrics = {
        "n": test.__len__(),
        "teacher": {**_summary(t_res), "per_step_exact_accuracy": t_res["per_step_exact_accuracy"],
                    "seconds_per_puzzle": t_res["seconds"] / len(test)},
        "tdrm": {**_strip(main), "seconds_per_puzzle": main["seconds"] / len(test)},
        "paired_tdrm_vs_teacher": mcnemar_exact(list(main["correct"]), list(t_res["correct"])),
        "difference_points": 100 * (main["exact_accuracy"] - t_res["exact_accuracy"]),
        "cost": cost,
        "flops_ratio_tdrm_to_teacher": cost["tdrm_flops"] / cost["teacher_flops"],
    }
    steps_rows = []
    for s in cfg.tdrm_steps:
        r = main if s == d["sample_steps"] else evaluate_tdrm(
            model, codec, schedule, test, sampler=d["sampler"], steps=s, eta=d["eta"],
            samples=1, progress=progress, **common)
        lo, hi = r["ci95"]
        steps_rows.append({"sampling_steps": s, "exact_accuracy": r["exact_accuracy"], "ci_low": lo, "ci_high": hi,
                           "flops_per_puzzle": s * cost["denoiser_flops_per_call"],
                           "teacher_exact_accuracy": t_res["exact_accuracy"]})
    metrics["accuracy_by_sampling_steps"] = steps_rows
    if cfg.best_of > 1:
        # the one-sample run at the best-of settings is `main` when its sampler settings match; at
        # DDIM eta 0 it is also the first of the N samples (its boards reused, the other N - 1 drawn after it)
        same = d["sampler"] == "ddim" and d["eta"] == cfg.best_of_eta
        r = evaluate_tdrm(model, codec, schedule, test, sampler="ddim", steps=d["sample_steps"],
                          eta=cfg.best_of_eta, samples=cfg.best_of, progress=progress,
                          first=main if same and cfg.best_of_eta == 0 else None, **common)
        one = main if same else evaluate_tdrm(
            model, codec, schedule, test, sampler="ddim", steps=d["sample_steps"],
            eta=cfg.best_of_eta, samples=1, progress=progress, **common)
        metrics["best_of_n"] = {"samples": cfg.best_of, "eta": cfg.best_of_eta, "steps": d["sample_steps"],
                                "exact_accuracy": r["exact_accuracy"], "ci95": r["ci95"],
                                "valid_fraction": r["valid_fraction"],
                                "network_evals_per_puzzle": r["network_evals_per_puzzle"],
                                "single_sample_exact_accuracy": one["exact_accuracy"],
                                "paired_vs_single": mcnemar_exact(list(r["correct"]), list(one["correct"]))}
    per_step_rows = [{"step": i + 1, "teacher_exact_accuracy": t, "tdrm_exact_accuracy": g, "cosine_to_teacher": c,
                      "board_agreement_with_teacher": a}
                     for i, (t, g, c, a) in enumerate(zip(t_res["per_step_exact_accuracy"],
                                                          main["per_step_exact_accuracy_first_sample"],
                                                          main["per_step_cosine_to_teacher"],
                                                          main["per_step_board_agreement_with_teacher"]))]
    if control_path:
        cm, ccodec, csch, cck = load_tdrm(control_path, device)
        cd = cck["config"]["distill"]
        c = evaluate_tdrm(cm, ccodec, csch, test, sampler=cd["sampler"], steps=cd["sample_steps"],
                          eta=cd["eta"], samples=1, progress=progress, reference=t_y, **common)
        metrics["control_final_state_only"] = {
            **_summary(c), "steps": cd["sample_steps"], "cosine_to_teacher_final": c["per_step_cosine_to_teacher"][-1],
            "paired_tdrm_vs_control": mcnemar_exact(list(main["correct"]), list(c["correct"]))}
    return metrics, steps_rows, per_step_rows
