"""Evaluate a TDRM checkpoint: sample trajectories, decode answers, label-free pick among samples,
and compare with the teacher on the same puzzles (METHOD.md section 3, "as expressive as TRM")."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from ..data.board import logits_to_digits, to_tokens, valid_boards
from ..data.loaders import PuzzleSet
from ..diffusion.samplers import RowSlice, draw_normal
from ..diffusion.sampling import generate
from ..dist import SINGLE, World, all_mean, batch_shares, gather_rows
from .metrics import wilson


def cosine_per_step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over puzzles and cells of the cosine similarity of states a, b (B, K, L, D) -> (K,)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean((0, 2))


@torch.no_grad()
def evaluate_tdrm(model, codec, schedule, ps: PuzzleSet, *, sampler: str, steps: int,
                  eta: float, samples: int, seed: int, batch_size: int = 64, device="cpu",
                  progress: bool = False, reference: torch.Tensor | None = None, world: World = SINGLE,
                  first: dict | None = None) -> dict:
    """Exact accuracy of the decoded final state; with `samples` > 1, the first sample whose board
    passes the label-free validity check is kept; a later sample runs the chain only on the puzzles
    still without a valid board, drawing its noise for the whole batch (`_resample`), so the result
    is the one of sampling every puzzle every time. `codec` decodes (it holds the frozen teacher).
    `reference`: the teacher's y states (M, K, N, D) at the cells of the same puzzles, for the
    cosine similarity of the first sample per step (of this rank's rows, `teacher_states`) and the
    share of puzzles whose decoded board at step k is the teacher's decoded board at step k (a
    faithful trajectory reproduces the teacher's intermediate boards, its early errors included).
    Data parallel (`world`): rank r samples its rows `dist.rows` of every batch, with the noise
    those rows get in one process (`RowSlice`), and the per-puzzle results are gathered, so every
    rank returns the one-process result.
    `first`: the result of a one-sample call with the same model, puzzles, steps, seed and batch
    size, at DDIM eta 0 (whose only draw is the starting noise, `reuse_check`): its boards are the
    first of the `samples` draws (not sampled again), and the others continue the seed's stream
    after that call's draws, so the first sample of best-of-N is exactly the one-sample result.
    `network_evals_per_puzzle`: the denoiser calls per puzzle, averaged over the puzzles as run
    (steps x the chains each puzzle needed); `network_evals_per_puzzle_max` = steps x samples.
    The result's `correct` (M,) bool and `boards` (M, N) final boards of the first sample are
    per-puzzle arrays (drop them before writing JSON)."""
    gen = torch.Generator().manual_seed(seed)
    if first is not None:
        reuse_check(first, n=len(ps), sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                    spacing=schedule.spacing)
        for nb, mine, _ in batch_shares(len(ps), batch_size, world):  # the one-sample call's draws, in its order
            draw_normal((mine.stop - mine.start, model.K, model.L, model.C), RowSlice(gen, nb, mine)
                        if world.distributed else gen)
    exact, per_step, picked_valid, cos, firsts, drawn, agree = [], [], [], [], [], [], []
    t0 = time.perf_counter()
    local = 0  # this rank's rows so far (its rows of `reference`)
    for nb, mine, sl in tqdm(list(batch_shares(len(ps), batch_size, world)), desc="eval tdrm",
                       disable=not progress or not world.main, mininterval=2, leave=False):
        p = torch.as_tensor(ps.puzzles[sl], device=device).long()
        s = torch.as_tensor(ps.solutions[sl], device=device).long()
        tokens = torch.as_tensor(to_tokens(ps.puzzles[sl]), device=device)
        g = RowSlice(gen, nb, mine) if world.distributed else gen
        steps_right = None
        if first is not None:  # the first sample: the one-sample call's boards
            best = torch.as_tensor(first["boards"][sl], device=device).long()
            best_ok = valid_boards(p, best, ps.shape)
        else:  # the first sample: the whole batch
            x = generate(model, tokens, schedule, sampler=sampler, steps=steps, eta=eta, generator=g,
                         confidence=codec.cell_confidence)  # (B, R, L, C)
            y = codec.step_y(x)  # (B, K, N, D)
            boards = logits_to_digits(codec.teacher.lm_head(y))  # (B, K, N) digits
            first_boards = boards[:, -1]
            best, best_ok = first_boards.clone(), valid_boards(p, first_boards, ps.shape)
            steps_right = (boards == s[:, None]).all(-1)
            if reference is not None:
                ref = reference[local:local + len(y), -y.shape[1]:].to(y.device)
                cos.append(cosine_per_step(y, ref).cpu().numpy() * len(y) if len(y) else np.zeros(y.shape[1]))
                ref_boards = logits_to_digits(codec.teacher.lm_head(ref.to(y.dtype)))  # (B, K, N) the teacher's
                agree.append(gather_rows((boards == ref_boards).all(-1).float(), world).cpu().numpy())
        chains = torch.ones(len(p), device=p.device)  # (b,) chains run per puzzle (the first sample's, reused or not)
        for _ in range(1, samples):  # later samples: only the puzzles without a valid board yet
            chains[_resample(model, codec, schedule, p, tokens, best, best_ok, ps.shape, sampler=sampler,
                             steps=steps, eta=eta, generator=gen, total=nb, mine=mine)] += 1
        local += len(p)
        exact.append(gather_rows((best == s).all(-1), world).cpu().numpy())
        if first is None:
            per_step.append(gather_rows(steps_right.float(), world).cpu().numpy())
            firsts.append(gather_rows(first_boards.to(torch.int8), world).cpu().numpy())
        picked_valid.append(gather_rows(best_ok, world).cpu().numpy())
        drawn.append(gather_rows(chains, world).cpu().numpy())
    if cos and world.distributed:  # per-rank sums of cosines -> the sum over all puzzles
        cos = [np.asarray(all_mean([float(v) for v in np.sum(cos, 0)], world)) * world.size]
    exact = np.concatenate(exact)
    n = int(len(exact))
    seconds = time.perf_counter() - t0
    res = {"n": n, "exact_accuracy": float(exact.mean()), "ci95": list(wilson(int(exact.sum()), n)),
           "valid_fraction": float(np.concatenate(picked_valid).mean()),
           "per_step_exact_accuracy_first_sample": (first["per_step_exact_accuracy_first_sample"] if first is not None
                                                    else [float(v) for v in np.concatenate(per_step).mean(0)]),
           "sampler": sampler, "steps": steps, "eta": eta, "spacing": schedule.spacing, "samples": samples, "seed": seed,
           "batch_size": batch_size,
           "network_evals_per_puzzle": steps * float(np.concatenate(drawn).mean()),
           "network_evals_per_puzzle_max": steps * samples, "seconds": seconds,
           "puzzles_per_second": n / max(seconds, 1e-9), "correct": exact,
           "boards": first["boards"] if first is not None else np.concatenate(firsts)}
    if cos:
        res["per_step_cosine_to_teacher"] = [float(v) for v in np.sum(cos, 0) / n]
    elif first is not None and "per_step_cosine_to_teacher" in first:
        res["per_step_cosine_to_teacher"] = first["per_step_cosine_to_teacher"]
    if agree:
        res["per_step_board_agreement_with_teacher"] = [float(v) for v in np.concatenate(agree).mean(0)]
    elif first is not None and "per_step_board_agreement_with_teacher" in first:
        res["per_step_board_agreement_with_teacher"] = first["per_step_board_agreement_with_teacher"]
    return res


def _resample(model, codec, schedule, p, tokens, best, best_ok, shape, *, sampler, steps, eta, generator,
              total: int, mine: slice) -> None:
    """One more sample of best-of-N, in place: the batch's draws are made whole (a `RowSlice` of the
    batch's `total` rows), so the seed's stream advances exactly as when every puzzle is sampled, but
    the chain runs only on this rank's rows (`mine`) whose kept board `best` is not yet valid;
    a valid board found replaces the kept one. Puzzles with a valid board are never replaced, so
    skipping them changes no result, only the cost (best of 4 on the default task: 1-2% of rows).
    Returns the indices (of this rank's rows) that were sampled again."""
    need = (~best_ok).nonzero().flatten()  # this rank's rows still without a valid board
    rows = torch.arange(mine.start, mine.stop)[need.cpu()]  # their rows in the whole batch
    x = generate(model, tokens[need], schedule, sampler=sampler, steps=steps, eta=eta,
                 generator=RowSlice(generator, total, rows), confidence=codec.cell_confidence)  # (b', R, L, C)
    if not len(need):
        return need
    boards = logits_to_digits(codec.teacher.lm_head(codec.step_y(x)))[:, -1]  # (b', N) final boards
    ok = valid_boards(p[need], boards, shape)
    best[need[ok]] = boards[ok]
    best_ok[need[ok]] = True
    return need


def reuse_check(first: dict, *, n: int, sampler: str, steps: int, eta: float, seed: int, batch_size: int,
                spacing: float = 1.0) -> None:
    """Raise ValueError unless `first` (an `evaluate_tdrm` result) can stand in for the first sample
    of a call with these settings: one sample of the same n puzzles, seed, steps, time spacing and batch
    size, DDIM at eta 0 on both sides (a stochastic chain draws more than its starting noise)."""
    want = {"n": n, "samples": 1, "sampler": "ddim", "steps": steps, "eta": 0.0, "seed": seed, "spacing": spacing}
    have = {k: first.get(k) for k in want}
    if sampler != "ddim" or eta != 0.0 or have != want or first.get("batch_size") != batch_size \
            or "boards" not in first:
        raise ValueError(f"a first-sample result is reused only from one DDIM eta-0 sample of the same puzzles, "
                         f"seed, steps and batch size: it has {have} (batch size {first.get('batch_size')}), "
                         f"this call {sampler} eta {eta}, {steps} steps, seed {seed}, batch size {batch_size}")


def flops(fn, *args) -> int:
    """Floating-point operations of one call, counted by torch's FLOP counter (matmuls and
    attention; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


@torch.no_grad()
def inference_cost(codec, model, tokens: torch.Tensor, steps: int) -> dict:
    """Per-puzzle network evaluations and FLOPs: the teacher's full N_sup inference against
    `steps` denoiser calls plus decoding the answer (the lm_head; for state z also the y-updates)
    for puzzles `tokens` (B, N)."""
    b = tokens.shape[0]
    teacher = codec.teacher
    c = teacher.cfg
    t_flops = flops(lambda: teacher.trace(tokens, keep_states=False)) / b
    x = torch.zeros((b, model.K, model.L, model.C), device=tokens.device)
    t = torch.ones(b, dtype=torch.long, device=tokens.device)
    d_flops = flops(lambda: model(x, t, tokens, x if model.cfg.self_cond else None)) / b
    head = flops(lambda: codec.answer_logits(x)) / b
    return {"teacher_network_evals": c.n_sup * c.T * (c.n + 1), "teacher_flops": t_flops,
            "denoiser_flops_per_call": d_flops, "tdrm_network_evals": steps, "tdrm_flops": steps * d_flops + head,
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "tdrm_params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def chain_diagnosis(model, codec, schedule, ps: PuzzleSet, *, steps: int, seed: int, batch_size: int = 256,
                    device="cpu", early: int | None = None, corrector_steps: int = 0,
                    teacher_boards: np.ndarray | None = None) -> dict:
    """Where the deterministic sampling chain decides the board (issue 13, section 1).

    For every denoiser call m of a `steps`-call chain (DDIM eta 0, or the rolling per-row schedule),
    the answer decoded from that call's estimate x0_hat: exact and cell accuracy, and the share of
    blank cells whose decoded digit differs from the previous call's. `early` (default steps // 3):
    of the blank cells wrong after call `early`, the share right at the end (the chain correcting
    itself). Per row k of the final trajectory: its decoded exact accuracy (progress along rows).
    The chain is the one-sample evaluation's (same seed, batches and draws), so `boards` (M, N) and
    `correct` (M,) bool, per puzzle, are `evaluate_tdrm(..., samples=1, eta=0)`'s without sampling
    again (drop both before writing JSON). With `corrector_steps` > 0, `corrector_exact` is the
    teacher-as-corrector baseline's exact accuracy after 1..corrector_steps teacher supervision
    steps from the same samples. With `teacher_boards` (M, K', N) digits, the teacher's decoded board
    after each supervision step (`teacher_run`'s `step_boards`, K' >= the model's K steps),
    `agreement_by_row` is the share of puzzles whose row k board is the teacher's board at step k
    (the last K of the teacher's), as `evaluate_tdrm`'s `per_step_board_agreement_with_teacher`."""
    gen = torch.Generator().manual_seed(seed)
    early = max(1, steps // 3) if early is None else early
    if teacher_boards is not None and len(teacher_boards) != len(ps):
        raise ValueError(f"teacher_boards holds {len(teacher_boards)} puzzles, the set {len(ps)}")
    exact, cell, changed, rows_exact, finals, corrected, agree = [], [], [], [], [], [], []
    wrong_early = fixed_later = blanks = 0
    for i in range(0, len(ps), batch_size):
        p = torch.as_tensor(ps.puzzles[i:i + batch_size], device=device).long()
        s = torch.as_tensor(ps.solutions[i:i + batch_size], device=device).long()
        tokens = torch.as_tensor(to_tokens(ps.puzzles[i:i + batch_size]), device=device)
        out = generate(model, tokens, schedule, sampler="ddim", steps=steps, eta=0.0, generator=gen, return_path=True,
                       confidence=codec.cell_confidence)
        boards = torch.stack([logits_to_digits(codec.answer_logits(st.x0_hat)) for st in out.path])  # (M, B, N)
        right = boards == s[None]
        blank = p == 0  # (B, N)
        exact.append(right.all(-1).float().sum(1).cpu())
        cell.append(right.float().mean(-1).sum(1).cpu())
        ch = (boards[1:] != boards[:-1]) & blank[None]
        changed.append(torch.cat([torch.zeros(1), ch.float().sum((1, 2)).cpu()]))
        blanks += int(blank.sum())
        e = min(early, len(out.path)) - 1
        we = ~right[e] & blank
        wrong_early += int(we.sum())
        fixed_later += int((we & right[-1]).sum())
        rows = logits_to_digits(codec.step_logits(out.x0))  # (B, K, N)
        rows_exact.append((rows == s[:, None]).all(-1).float().sum(0).cpu())
        if teacher_boards is not None:
            ref = torch.as_tensor(teacher_boards[i:i + batch_size, -rows.shape[1]:], device=device).long()  # (B, K, N)
            agree.append((rows == ref).all(-1).float().sum(0).cpu())
        finals.append(rows[:, -1].cpu())  # (B, N) the last row's board, as evaluate_tdrm decodes it
        if corrector_steps:
            digits = teacher_corrected(codec, out.x0, tokens, corrector_steps)  # (S, B, N)
            corrected.append((digits == s[None]).all(-1).float().sum(1).cpu())
    n = len(ps)
    extra = {"corrector_exact": [float(v) for v in torch.stack(corrected).sum(0) / n]} if corrector_steps else {}
    if teacher_boards is not None:
        extra["agreement_by_row"] = [float(v) for v in torch.stack(agree).sum(0) / n]
    boards = torch.cat(finals)  # (M, N)
    correct = (boards == torch.as_tensor(ps.solutions).long()).all(-1)
    return {"n": n, "calls": len(exact[0]), "early_call": early, "boards": boards.numpy(), "correct": correct.numpy(),
            **extra,
            "exact_by_call": [float(v) for v in torch.stack(exact).sum(0) / n],
            "cell_by_call": [float(v) for v in torch.stack(cell).sum(0) / n],
            "blank_changed_by_call": [float(v) for v in torch.stack(changed).sum(0) / max(blanks, 1)],
            "wrong_after_early_fixed_at_end": fixed_later / max(wrong_early, 1),
            "wrong_blank_cells_after_early": wrong_early,
            "exact_by_row": [float(v) for v in torch.stack(rows_exact).sum(0) / n]}


@torch.no_grad()
def teacher_corrected(codec, x_std: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """The teacher-as-corrector baseline (reported beside TDRM, never as TDRM): the teacher's
    supervision steps started from a generated trajectory's last state. x_std (B, R, L, C),
    tokens (B, N) -> digits after each of `steps` teacher steps (steps, B, N). Positions the trace
    did not record (prefix) and a z the state does not carry start from the teacher's initial state."""
    t = codec.teacher
    b = tokens.shape[0]
    y0, z0 = t.initial_state(b)
    y, z = codec._split(x_std[:, -1])  # (B, L', D) each or None
    if y is None:  # state z: y from the teacher's y-update along the generated cycle ends
        y = codec.y_path(x_std)[:, -1]
    p = y0.shape[1] - y.shape[1]  # prefix positions not in the trace

    def full(h, init):
        return init if h is None else torch.cat([init[:, :p], h.to(init.dtype)], dim=1)
    y, z = full(y, y0), full(z, z0)
    x = t.input_embedding(tokens)
    out = []
    for _ in range(steps):
        y, z, logits, _ = t.step(y, z, x)
        out.append(logits_to_digits(logits))
    return torch.stack(out)
