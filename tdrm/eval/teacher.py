"""Evaluate a TRM on a puzzle set: exact and cell accuracy after each supervision step."""
from __future__ import annotations

import time

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from ..data.board import logits_to_digits, to_tokens
from ..data.loaders import PuzzleSet
from ..dist import SINGLE, World, batch_shares, gather_rows
from .metrics import rating_bucket, wilson


@torch.no_grad()
def predict(model, puzzles: np.ndarray, batch_size: int, device, steps: int | None = None,
            progress: bool = False, world: World = SINGLE) -> np.ndarray:
    """Predicted boards after each supervision step: (K, M, C) int8, digits 1..N. Data parallel
    (`world`): each rank predicts its rows `dist.rows` of every batch; every rank returns all."""
    model.eval()
    out = []
    for _, _, sl in tqdm(list(batch_shares(len(puzzles), batch_size, world)), desc="eval",
                      disable=not progress or not world.main, mininterval=2, leave=False):
        part = puzzles[sl]
        if len(part):
            tr = model.trace(torch.as_tensor(to_tokens(part), device=device), steps, keep_states=False)
            pred = logits_to_digits(tr.logits).clamp_min(0).to(torch.int8)  # (K, b, C) tokens -> digits
        else:  # a rank's empty share of a short batch
            pred = torch.zeros((steps or model.cfg.n_sup, 0, puzzles.shape[1]), dtype=torch.int8, device=device)
        out.append(rearrange(gather_rows(rearrange(pred, "k b c -> b k c"), world), "b k c -> k b c").cpu().numpy())
    return np.concatenate(out, axis=1)


def score(preds: np.ndarray, ps: PuzzleSet) -> dict:
    """Metrics from per-step predictions (K, M, C) against the solutions."""
    right = preds == ps.solutions[None]  # (K, M, C)
    exact_k = right.all(-1)  # (K, M)
    exact = exact_k[-1]
    blanks = ps.puzzles == 0
    n = int(len(exact))
    buckets: dict[str, list[bool]] = {}
    for r, e in zip(ps.ratings.tolist(), exact.tolist()):
        buckets.setdefault(rating_bucket(int(r)), []).append(e)
    return {
        "n": n,
        "exact_accuracy": float(exact.mean()),
        "ci95": list(wilson(int(exact.sum()), n)),
        "cell_accuracy": float(right[-1].mean()),
        "blank_cell_accuracy": float(right[-1][blanks].mean()) if blanks.any() else 1.0,
        "per_step_exact_accuracy": [float(v) for v in exact_k.mean(-1)],
        "per_step_cell_accuracy": [float(v) for v in right.mean((-1, -2))],
        "by_rating": {k: {"n": len(v), "exact_accuracy": float(np.mean(v))}
                      for k, v in sorted(buckets.items())},
    }


def evaluate(model, ps: PuzzleSet, batch_size: int = 256, device="cpu", steps: int | None = None,
             progress: bool = False, world: World = SINGLE) -> dict:
    t0 = time.perf_counter()
    preds = predict(model, ps.puzzles, batch_size, device, steps, progress, world)
    res = score(preds, ps)
    res["seconds"] = time.perf_counter() - t0
    res["puzzles_per_second"] = res["n"] / max(res["seconds"], 1e-9)
    return res
