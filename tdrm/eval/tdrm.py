"""Evaluate a TDRM checkpoint: sample trajectories, decode answers, label-free pick among samples."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from ..data.board import Shape, to_tokens, units
from ..data.loaders import PuzzleSet
from ..diffusion.trajectory import decode_logits
from ..train.distill import generate
from .metrics import wilson


def valid_boards(puzzles: torch.Tensor, boards: torch.Tensor, shape: Shape) -> torch.Tensor:
    """(B,) True where `boards` (B, L) of digits keep the givens of `puzzles` (B, L, 0 = blank)
    and every row, column and box holds each digit once. Uses no solution label."""
    u = torch.as_tensor(units(shape), device=boards.device)  # (U, N)
    in_range = ((boards >= 1) & (boards <= shape.n)).all(-1)
    onehot = torch.nn.functional.one_hot((boards.clamp(1, shape.n) - 1).long(), shape.n)  # (B, L, N)
    counts = onehot[:, u].sum(2)  # (B, U, N)
    givens = puzzles > 0
    kept = ((boards == puzzles) | ~givens).all(-1)
    return in_range & kept & (counts == 1).all(-1).all(-1)


@torch.no_grad()
def evaluate_tdrm(model, teacher, stdz, projection, schedule, ps: PuzzleSet, *, sampler: str, steps: int,
                  eta: float, samples: int, seed: int, batch_size: int = 64, device="cpu",
                  progress: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    exact, per_step, picked_valid = [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(ps), batch_size), desc="eval tdrm", disable=not progress, mininterval=2, leave=False):
        p = torch.as_tensor(ps.puzzles[i:i + batch_size], device=device).long()
        s = torch.as_tensor(ps.solutions[i:i + batch_size], device=device).long()
        tokens = torch.as_tensor(to_tokens(ps.puzzles[i:i + batch_size]), device=device)
        best, best_ok, steps_right = None, None, None
        for _ in range(samples):
            x = generate(model, tokens, schedule, sampler=sampler, steps=steps, eta=eta, generator=gen)  # (B, K, L, C)
            boards = torch.stack([decode_logits(teacher, x[:, k], stdz, projection).argmax(-1) - 1
                                  for k in range(x.shape[1])], dim=1)  # (B, K, L) digits
            ok = valid_boards(p, boards[:, -1], ps.shape)
            if best is None:
                best, best_ok, steps_right = boards[:, -1].clone(), ok.clone(), (boards == s[:, None]).all(-1)
            else:
                take = ok & ~best_ok  # keep the first valid sample
                best[take] = boards[take, -1]
                best_ok |= ok
        exact.append((best == s).all(-1).cpu().numpy())
        per_step.append(steps_right.float().cpu().numpy())
        picked_valid.append(best_ok.cpu().numpy())
    exact = np.concatenate(exact)
    n = int(len(exact))
    seconds = time.perf_counter() - t0
    return {"n": n, "exact_accuracy": float(exact.mean()), "ci95": list(wilson(int(exact.sum()), n)),
            "valid_fraction": float(np.concatenate(picked_valid).mean()),
            "per_step_exact_accuracy_first_sample": [float(v) for v in np.concatenate(per_step).mean(0)],
            "sampler": sampler, "steps": steps, "eta": eta, "samples": samples, "seed": seed,
            "network_evals_per_puzzle": steps * samples, "seconds": seconds,
            "puzzles_per_second": n / max(seconds, 1e-9)}
