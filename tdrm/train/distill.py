"""Distil teacher trajectories into the trajectory-diffusion model (METHOD.md section 3).

Loss = weighted x0-MSE on the standardised trajectory + ce_weight * cross-entropy of the answer
decoded from the predicted last step through the frozen teacher lm_head (Diffusion-LM's rounding
term) + dynamics_weight * the mean squared gap between each predicted step and one teacher move
from the predicted step before it (`Codec.dynamics_residual`; skipped when the weight is 0). Trajectory batches stream from the sharded traces, epoch e shuffled by rng (seed, e); the
resume checkpoint keeps weights, EMA, optimizer, generator and (epoch, batch) position.
With `chain_prob` > 0 that share of steps trains on the model's own sampling chains instead
(`tdrm.train.carry`: one call per chain per step, the chains carried across steps and kept in the
resume checkpoint).

Data parallel (`world` of several ranks, under torchrun): every rank reads the same global batch of
`distill.batch` trajectories and draws its noise levels, noise and coin flips for the whole batch
from the same generator, then keeps its rows `dist.rows(B, world)`; DDP averages the gradients
(the loss scaled by `dist.loss_scale`, exact also for an epoch's short last batch), so the run equals
the one-process run up to floating-point summation order (except that an epoch's last batch is
skipped when it has fewer rows than ranks). Rank 0 evaluates and writes.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Params
from ..data.board import to_tokens
from ..device import check_amp, maybe_compile, resolve_device
from ..dist import SINGLE, World, all_gather_objects, all_mean, barrier, loss_scale, per_rank_batch, rows, wrap
from ..diffusion.losses import distillation_loss, error_weights
from ..diffusion.samplers import row_step
from ..diffusion.sampling import generate
from ..diffusion.schedules import cell_levels, make_schedule, q_sample, random_ranks, row_levels
from ..diffusion.trajectory import Codec, Layout
from ..traces.tensors import fit_standardizer, state_tensor
from ..models.denoiser import build_denoiser
from ..tracking.base import Tracker
from ..traces.store import TraceReader
from .. import checkpoint
from . import carry as chain
from .optim import EMA, warmup_constant, warmup_cosine
from ..rng import DISTILL_BATCHES, VALIDATION_SAMPLING, stream

ROW_NOISE = ("shared", "independent", "rolling", "cells")


def check_arms(cfg) -> None:
    """Clear errors for the distillation switches of issue 13."""
    if cfg.row_noise not in ROW_NOISE:
        raise ValueError(f"distill.row_noise must be one of {ROW_NOISE}, got {cfg.row_noise!r}")
    if not 0.0 <= cfg.row_lag <= 1.0:
        raise ValueError(f"distill.row_lag must be in [0, 1], got {cfg.row_lag}")
    if not 0.0 <= cfg.shared_prob <= 1.0:
        raise ValueError(f"distill.shared_prob must be in [0, 1], got {cfg.shared_prob}")
    if cfg.shared_prob and cfg.row_noise != "independent":
        raise ValueError("distill.shared_prob mixes one-level samples into independent per-row levels: it needs "
                         f"row_noise independent, got {cfg.row_noise!r}")
    if not 0.0 < cfg.cell_window <= 1.0:
        raise ValueError(f"distill.cell_window must be in (0, 1], got {cfg.cell_window}")
    if cfg.ce_rows not in ("last", "all"):
        raise ValueError(f"distill.ce_rows must be last or all, got {cfg.ce_rows!r}")
    if cfg.ce_rows == "all" and cfg.state == "z":
        raise ValueError("distill.ce_rows all needs state y or yz (one modelled row per supervision step)")
    if cfg.ce_error_weight <= 0:
        raise ValueError(f"distill.ce_error_weight must be > 0, got {cfg.ce_error_weight}")
    if cfg.ce_error_weight != 1.0 and cfg.ce_rows != "all":
        raise ValueError("distill.ce_error_weight weights the teacher's intermediate errors in the CE of every row: "
                         f"it needs distill.ce_rows all (got {cfg.ce_rows!r})")
    if not 0.0 <= cfg.self_correct_prob <= 1.0:
        raise ValueError(f"distill.self_correct_prob must be in [0, 1], got {cfg.self_correct_prob}")
    if not 0.0 <= cfg.chain_prob <= 1.0:
        raise ValueError(f"distill.chain_prob must be in [0, 1], got {cfg.chain_prob}")
    if cfg.chain_prob and cfg.row_noise != "shared":
        raise ValueError("distill.chain_prob trains on the shared-level DDIM chain; it needs row_noise shared, "
                         f"got {cfg.row_noise!r}")
    if cfg.sampler == "ddpm" and cfg.eta != 1.0:
        raise ValueError(f"distill.sampler ddpm samples at eta 1; got distill.eta {cfg.eta} (use ddim for other values)")
    if cfg.spacing <= 0:
        raise ValueError(f"distill.spacing must be > 0, got {cfg.spacing}")
    if cfg.spacing != 1.0 and cfg.row_noise != "shared":
        raise ValueError(f"distill.spacing spaces the shared-level sampler's calls; row_noise {cfg.row_noise!r} "
                         f"samples on its own schedule (set spacing: 1)")
    if cfg.sample_steps < 1:
        raise ValueError(f"distill.sample_steps must be >= 1, got {cfg.sample_steps}")
    if cfg.denoiser.latent_cond and not cfg.denoiser.self_cond:
        raise ValueError("distill.denoiser.latent_cond trains on self-conditioning's two-pass batches: "
                         "it needs denoiser.self_cond true")


def draw_levels(cfg, b: int, k: int, gen: torch.Generator, cells: int = 0,
                prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training noise levels t and the levels t_hi one sampling round earlier (noisier), as the
    sampler visits them: (B,) each for a shared level, (B, K) for per-row levels, (B, 1, L) per cell.
    shared: t ~ U{1..T}; independent: every row's t ~ U{0..T} (Diffusion Forcing), or with probability
    `shared_prob` per sample one t ~ U{1..T} for all its rows; rolling: a
    progress p ~ U(0, 1) through the rolling schedule of `row_lag` (`row_levels`); cells: a progress
    p ~ U(0, 1) through the cell-order schedule (`cell_levels`) of a random order of the `cells`
    positions (train for every order; the sampler picks the most confident), the `prefix` positions
    first, as the sampler takes them."""
    T, dt = cfg.T, 1.0 / cfg.sample_steps
    if cfg.row_noise == "cells":
        p = torch.rand((b,), generator=gen, dtype=torch.float64)
        ranks = random_ranks(b, cells, prefix, gen)  # (B, L)
        return (cell_levels(p, ranks, cfg.cell_window, T),
                cell_levels((p - dt).clamp(min=0.0), ranks, cfg.cell_window, T))
    if cfg.row_noise == "shared":
        t = torch.randint(1, T + 1, (b,), generator=gen)
        return t, (t + max(T // cfg.sample_steps, 1)).clamp(max=T)
    if cfg.row_noise == "independent":
        t = torch.randint(0, T + 1, (b, k), generator=gen)  # (B, K)
        if cfg.shared_prob:  # (drawn only then: runs without it keep their random stream)
            one = torch.randint(1, T + 1, (b, 1), generator=gen).expand(b, k)
            t = torch.where(torch.rand((b, 1), generator=gen) < cfg.shared_prob, one, t)
        return t, torch.where(t > 0, (t + max(T // cfg.sample_steps, 1)).clamp(max=T), t)
    p = torch.rand((b,), generator=gen, dtype=torch.float64)
    return row_levels(p, k, cfg.row_lag, T), row_levels((p - dt).clamp(min=0.0), k, cfg.row_lag, T)


def self_correct_input(schedule, x_hi: torch.Tensor, x0_hi: torch.Tensor, t_hi: torch.Tensor,
                       t: torch.Tensor) -> torch.Tensor:
    """x_t made by the deterministic DDIM step from x_hi at t_hi with the model's estimate x0_hi
    (what sampling feeds the next call), per sample (B,), per row (B, K) or per cell (B, 1, L) levels."""
    if t.dim() == 1:
        t, t_hi = t[:, None].expand(-1, x_hi.shape[1]), t_hi[:, None].expand(-1, x_hi.shape[1])
    return row_step(schedule, x_hi, x0_hi, t_hi, t, eta=0.0)[0]


def _batches(reader: TraceReader, batch: int, seed: int, epoch: int, task: str = "sudoku"):
    return reader.batches(batch, stream(seed, DISTILL_BATCHES, epoch),
                          fields=["y", "z", "puzzle", "solution", "logits"] + (["puzzle_id"] if task == "arc" else []))


def condition_tokens(shard: dict, task: str) -> np.ndarray:
    """The denoiser's puzzle input for trace rows: Sudoku's puzzle tokens (B, N); ARC's input
    canvas tokens with each row's puzzle id appended (B, N + 1) (the denoiser's `puzzle_table`)."""
    if task == "arc":
        return np.concatenate([shard["puzzle"].astype(np.int64), shard["puzzle_id"].astype(np.int64)[:, None]], 1)
    return to_tokens(shard["puzzle"])


def answer_tokens(shard: dict, task: str) -> np.ndarray:
    """The answer as teacher tokens (B, N): Sudoku's solution; ARC's label canvas (PAD included)."""
    return shard["solution"].astype(np.int64) if task == "arc" else to_tokens(shard["solution"])


def train_distill(params: Params, traces_dir: str | Path, teacher, out_path: str | Path, *,
                  resume_path: str | Path | None = None, tracker: Tracker | None = None,
                  progress: bool = True, log_every: int = 50, world: World = SINGLE,
                  device: torch.device | None = None) -> dict:
    """`teacher` is the frozen TRM (EMA weights). Writes the final checkpoint, returns metrics.
    `world`: this rank's place in a data-parallel job (`tdrm.dist.setup`); only rank 0 writes."""
    cfg, tracker = params.distill, tracker or Tracker()
    device = device or resolve_device(params.common.device)
    local = per_rank_batch(cfg.batch, world, "distill.batch")
    if cfg.accum < 1 or local % cfg.accum:
        raise ValueError(f"distill.accum = {cfg.accum} must be >= 1 and divide the per-rank batch {local} "
                         f"(distill.batch {cfg.batch} / {world.size} processes)")
    traces_dir = Path(traces_dir)
    reader, val = TraceReader(traces_dir / "train"), TraceReader(traces_dir / "val")
    dtype = reader.header["config"]["dtype"]
    proj_path = traces_dir / "projection.npy"
    projection = torch.from_numpy(np.load(proj_path)) if proj_path.is_file() else None
    layout = Layout.of(cfg.state, teacher.cfg, reader.header["config"])
    if cfg.final_only and cfg.state == "z":
        raise ValueError("distill.final_only (the K = 1 control) needs state y or yz: state z recomputes y "
                         "from every cycle's z")
    if cfg.dynamics_weight and cfg.final_only:
        raise ValueError("the dynamics-consistency term needs the whole trajectory, not final_only")
    check_arms(cfg)
    task = reader.header.get("task", "sudoku")  # ARC traces say so (tdrm/tasks/arc/traces.py)
    if task == "arc" and cfg.dynamics_weight:
        raise ValueError("the dynamics-consistency term runs the teacher without its puzzle ids: not for ARC traces "
                         "(set distill.dynamics_weight: 0)")
    stdz = fit_standardizer(reader, layout)

    def trajectory(shard: dict) -> torch.Tensor:  # (B, R, L, C) raw states; R = 1 for the control
        x = state_tensor(shard, layout, dtype)
        return x[:, -1:] if cfg.final_only else x

    k, l, c = trajectory(reader.load_shard(0, ["y", "z"])).shape[1:]
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    codec = Codec(teacher, layout, stdz, projection)
    if cfg.dynamics_weight:
        codec.check_dynamics()
    schedule = make_schedule(cfg.schedule, cfg.T, cfg.shift, cfg.spacing)
    if cfg.denoiser.arch == "move" and projection is not None:
        raise ValueError("denoiser arch move needs unprojected traces (traces.projection: none)")
    model = build_denoiser(cfg, k, l, c, teacher.vocab, layout.prefix, teacher=teacher, stdz=stdz,
                           schedule=schedule).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema, warmup=True)
    gen = torch.Generator().manual_seed(params.common.seed)
    step, epoch, pos, history = 0, 0, 0, []
    key = {"distill": asdict(cfg), "seed": params.common.seed, "traces": reader.manifest["header"]}
    resume_path = Path(resume_path) if resume_path else None
    ck = checkpoint.restore(resume_path, key, device, model, ema, opt, gen, world_size=world.size)
    if ck is not None:
        step, epoch, pos, history = ck["step"], ck["epoch"], ck["pos"], ck["history"]
    vdata = val.load_shard(0, ["y", "z", "puzzle", "solution"] + (["puzzle_id"] if task == "arc" else []))
    vn = min(cfg.eval_limit, len(vdata["puzzle"]))
    v_tokens = torch.as_tensor(condition_tokens(vdata, task)[:vn], device=device)
    v_sol = torch.as_tensor(answer_tokens(vdata, task)[:vn], device=device)

    def evaluate_ema() -> tuple[float, float]:
        """(exact, cell) accuracy of the EMA model's samples on the first validation puzzles."""
        x = generate(ema.model, v_tokens, schedule, sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta,
                     generator=torch.Generator().manual_seed(params.common.seed + VALIDATION_SAMPLING),
                     confidence=codec.cell_confidence)
        right = codec.answer_logits(x).argmax(-1) == v_sol
        return float(right.all(-1).float().mean()), float(right.float().mean())

    def save(path: Path, final: bool) -> None:
        nonlocal carries
        if not final and cfg.chain_prob:  # every rank's chains in progress (a collective: all ranks call save)
            carries = all_gather_objects(None if carry is None else carry.state_dict(), world)
        if not world.main:
            return
        payload = {"kind": "tdrm", "model": model.state_dict(), "ema": ema.state_dict(), "step": step,
                   "config": {"distill": asdict(cfg), "common": asdict(params.common), "profile": params.profile},
                   "shape": [k, l, c], "layout": asdict(layout), "stats": stdz.state_dict(), "projection": projection,
                   "teacher": {"model": teacher.state_dict(), "config": asdict(teacher.cfg),
                               "cells": teacher.cells, "vocab": teacher.vocab},
                   "traces_header": reader.manifest["header"], "history": history, "world_size": world.size}
        if not final:
            payload.update(optimizer=opt.state_dict(), generator=gen.get_state(), epoch=epoch, pos=pos,
                           resume_key=key, carry=carries, chains_done=chains_done)
        checkpoint.save(path, payload)

    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"distill.lr_schedule must be constant or cosine, got {cfg.lr_schedule!r}")

    def lr_at(i: int) -> float:
        if cfg.lr_schedule == "cosine":
            return warmup_cosine(i, cfg.lr, cfg.warmup, cfg.steps)
        return warmup_constant(i, cfg.lr, cfg.warmup)

    ddp = wrap(model, world, device)  # DDP over ranks (the model itself in one process)
    net = maybe_compile(ddp, params.common.compile)  # the training calls
    amp = check_amp(params.common.amp)

    def micro_loss(x0, t, t_hi, eps, puzzle, target, batch, kind):
        """The loss of one (micro-)batch of this rank's rows: (loss, mse, ce, dynamics)."""
        x_t = q_sample(x0, t, schedule, eps)
        prev, hid = None, None  # the first pass's estimate (self_cond) and hidden state (latent_cond)
        if kind == "correct":
            # error-correcting batch: the model's own (detached) estimate one sampling round noisier,
            # moved to t by the deterministic reverse step, is what it must denoise (and its self-cond input)
            with torch.no_grad():
                x_hi = q_sample(x0, t_hi, schedule, eps)
                x0_hi, hid = first_pass(x_hi, t_hi, puzzle)
                x_t = self_correct_input(schedule, x_hi, x0_hi, t_hi, t)
                prev = x0_hi if cfg.denoiser.self_cond else None
        elif kind == "self_cond":
            with torch.no_grad():
                prev, hid = first_pass(x_t, t, puzzle)
        x0_hat = net(x_t, t, puzzle, prev, hid) if latent else net(x_t, t, puzzle, prev)
        return objective(x0_hat, x0, t, puzzle, ce_targets(batch, target, x0.shape[1]))

    latent = cfg.denoiser.latent_cond

    def first_pass(x, t, puzzle):
        """(x0_hat, hidden or None) of a call without a previous estimate."""
        return net(x, t, puzzle, return_hidden=True) if latent else (net(x, t, puzzle), None)

    def ce_targets(batch, target, k_rows):
        """(B, K, N): every row against the teacher's argmax at that step, the last against `target`
        (ce_rows all); else `target` (B, N) for the answer alone."""
        if cfg.ce_rows != "all":
            return target
        targets = torch.as_tensor(batch["logits"][:, -k_rows:].argmax(-1), device=device).long()
        targets[:, -1] = target
        return targets

    def objective(x0_hat, x0, t, puzzle, targets):
        """(loss, mse, ce, dynamics) of estimates x0_hat of x0 (B, K, L, C) at levels t."""
        ce_logits = codec.step_logits(x0_hat) if targets.dim() == 3 else codec.answer_logits(x0_hat)
        cell_w = error_weights(targets, cfg.ce_error_weight) if cfg.ce_error_weight != 1.0 else None
        loss, mse, ce = distillation_loss(x0_hat, x0, t, schedule, weighting=cfg.loss_weighting,
                                          ce_logits=ce_logits, ce_targets=targets, ce_weight=cfg.ce_weight,
                                          ce_cell_weights=cell_w)
        dyn = torch.zeros(())
        if cfg.dynamics_weight:
            dyn = codec.dynamics_residual(x0_hat, puzzle).square().mean()
            loss = loss + cfg.dynamics_weight * dyn
        return loss, mse, ce, dyn

    def chain_micro(c, mb):
        """The loss of one call on carry slots `mb` at their levels, and the detached estimate."""
        t = levels[c.m[mb]]
        prev = c.prev[mb] if cfg.denoiser.self_cond else None
        hid = None
        if latent:
            x0_hat, hid = net(c.x[mb], t, c.puzzle[mb], prev, None if c.hidden is None else c.hidden[mb],
                              return_hidden=True)
            hid = hid.detach()
        else:
            x0_hat = net(c.x[mb], t, c.puzzle[mb], prev)
        return objective(x0_hat, c.x0[mb], t, c.puzzle[mb], c.targets[mb]), (x0_hat.detach(), hid)

    # the chain carry (chain_prob): this rank's chains in progress, kept in the resume checkpoint
    levels = chain.chain_levels(schedule, cfg.sample_steps).to(device)
    carry, chains_done, carries = None, 0, None
    if ck is not None and ck.get("carry") is not None:
        mine_state = ck["carry"][world.rank]
        carry = None if mine_state is None else chain.Carry.from_state(mine_state, device)
        chains_done = ck.get("chains_done", 0)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", disable=not progress or not world.main, mininterval=2)
    it, window = None, []
    model.train()
    while step < cfg.steps:
        if it is None:
            it = _batches(reader, cfg.batch, params.common.seed, epoch, task)
            for _ in range(pos):
                next(it)
        batch = next(it, None)
        if batch is None:
            it, epoch, pos = None, epoch + 1, 0
            continue
        pos += 1
        if len(batch["puzzle"]) < world.size:  # an epoch's last batch with fewer rows than ranks: skipped
            continue
        x0 = stdz.forward(trajectory(batch))  # (B, K, L, C), the global batch
        b = x0.shape[0]
        t, t_hi = draw_levels(cfg, b, x0.shape[1], gen, x0.shape[2], layout.prefix)
        eps = torch.randn(x0.shape, generator=gen)
        mine = rows(b, world)  # this rank's rows (all of them in one process)
        x0, t, t_hi, eps = x0[mine].to(device), t[mine].to(device), t_hi[mine].to(device), eps[mine].to(device)
        batch = {name: v[mine] for name, v in batch.items()}
        puzzle = torch.as_tensor(condition_tokens(batch, task), device=device)  # (b, N), ARC (b, N + 1)
        if cfg.ce_target == "solution":
            target = torch.as_tensor(answer_tokens(batch, task), device=device)
        else:
            target = torch.as_tensor(batch["logits"][:, -1].argmax(-1), device=device).long()
        # the batch's kind, one draw for the whole global batch: error-correcting, self-conditioned, or plain
        kind = "plain"
        if cfg.chain_prob and torch.rand((), generator=gen).item() < cfg.chain_prob and \
                (carry is not None or x0.shape[0] == local):  # a carry starts from a full batch
            kind = "chain"  # one call on every chain of the carry (refilled from this batch)
            fresh = (x0, eps, puzzle, ce_targets(batch, target, x0.shape[1]))
            if carry is None:
                carry = chain.start(levels, schedule, *fresh, first=mine.start)
            else:
                carry, refilled = chain.refill(carry, levels, schedule, *fresh)
                chains_done += refilled
        elif cfg.self_correct_prob and torch.rand((), generator=gen).item() < cfg.self_correct_prob:
            kind = "correct"
        elif cfg.denoiser.self_cond and torch.rand((), generator=gen).item() < cfg.self_cond_prob:
            kind = "self_cond"
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        n = carry.x0.shape[0] if kind == "chain" else x0.shape[0]
        micro = [m for i in range(cfg.accum) if (m := rows(n, World(rank=i, size=cfg.accum))).stop > m.start]
        sums, estimates, hiddens = [0.0, 0.0, 0.0], [], []
        for i, mb in enumerate(micro):
            sync = nullcontext() if not world.distributed or i == len(micro) - 1 else ddp.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    if kind == "chain":
                        (loss, mse, ce, dyn), (est, hid) = chain_micro(carry, mb)
                        estimates.append(est.float())
                        hiddens.append(None if hid is None else hid.float())
                    else:
                        loss, mse, ce, dyn = micro_loss(x0[mb], t[mb], t_hi[mb], eps[mb], puzzle[mb], target[mb],
                                                        {k: v[mb] for k, v in batch.items()}, kind)
                # micro-batch means -> the mean over this rank's rows; DDP's rank average -> the global batch
                b_all = n * world.size if kind == "chain" else b  # every rank's carry has `local` slots
                scale = (mb.stop - mb.start) / n * (loss_scale(n, b_all, world) if world.distributed else 1.0)
                (loss * scale if scale != 1.0 else loss).backward()
            for j, v in enumerate((mse, ce, dyn)):
                sums[j] += v.item() * (mb.stop - mb.start) / n
        if kind == "chain":  # every chain one reverse step on with its detached estimate
            carry = chain.advance(carry, levels, schedule, torch.cat(estimates),
                                  torch.cat(hiddens) if latent else None)
        opt.step()
        ema.update(model)
        step += 1
        bar.update(1)
        window.append(tuple(sums))
        if step % log_every == 0 or step == cfg.steps:
            means = all_mean([float(np.mean([w[i] for w in window])) for i in range(3)], world)  # over ranks
            row = {"step": step, "mse": means[0], "ce": means[1], "minutes": (time.perf_counter() - t0) / 60}
            if cfg.dynamics_weight:
                row["dynamics"] = means[2]
            if cfg.chain_prob:
                row["chains_done"] = chains_done  # this rank's chains run to the end and refilled so far
            window = []
            if world.main and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                row["val_exact_ema"], row["val_cell_ema"] = evaluate_ema()
                model.train()
            tracker.log_row("distill", row)
            history.append(row)
            bar.set_postfix(mse=f"{row['mse']:.3f}", ce=f"{row['ce']:.3f}")
        if resume_path and cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save(resume_path, final=False)
    bar.close()
    checkpoint.finish(save, out_path, resume_path, world.main)
    barrier(world)
    last = history[-1] if history else {}
    return {"steps": step, "minutes": (time.perf_counter() - t0) / 60, "final_mse": last.get("mse"),
            "final_ce": last.get("ce"), "val_exact_accuracy_ema": last.get("val_exact_ema"),
            "params": sum(p.numel() for p in model.parameters()), "history": history}
