"""Distil teacher trajectories into the trajectory-diffusion model (METHOD.md section 3).

Loss = weighted x0-MSE on the standardised trajectory + ce_weight * cross-entropy of the answer
decoded from the predicted last step through the frozen teacher lm_head (Diffusion-LM's rounding
term) + dynamics_weight * the mean squared gap between each predicted step and one teacher move
from the predicted step before it (`Codec.dynamics_residual`; skipped when the weight is 0). Trajectory batches stream from the sharded traces, epoch e shuffled by rng (seed, e); the
resume checkpoint keeps weights, EMA, optimizer, generator and (epoch, batch) position.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Params
from ..data.board import to_tokens
from ..device import resolve_device
from ..diffusion.losses import answer_ce, denoising_mse, loss_weights
from ..diffusion.samplers import sample_ddim, sample_ddpm
from ..diffusion.schedules import make_schedule, q_sample
from ..diffusion.trajectory import Codec, Layout, Standardizer, fit_standardizer, state_tensor
from ..models.denoiser import Denoiser
from ..tracking.base import Tracker
from ..traces.store import TraceReader
from . import checkpoint
from .optim import EMA, warmup_constant, warmup_cosine

SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm}


class SelfCondModel:
    """Sampler-facing closure x0_hat = model(x_t, t, puzzle, previous x0_hat)."""

    def __init__(self, model: Denoiser, puzzle: torch.Tensor):
        self.model, self.puzzle, self.prev = model, puzzle, None

    def __call__(self, x, t, cond=None):
        out = self.model(x, t, self.puzzle, self.prev if self.model.cfg.self_cond else None)
        self.prev = out
        return out


@torch.no_grad()
def generate(model: Denoiser, puzzle_tokens: torch.Tensor, schedule, *, sampler: str, steps: int, eta: float,
             generator: torch.Generator, return_path: bool = False, sigma_floor: float = 0.0):
    """Sample standardised trajectories (B, K, L, C) for puzzles (B, N); with `return_path`, the
    sampler's whole `Sample` (every step's x_t, x0_hat, mean, sigma, x_prev, log-prob)."""
    b = puzzle_tokens.shape[0]
    x_T = torch.randn((b, model.K, model.L, model.C), generator=generator).to(puzzle_tokens.device)
    fn = SAMPLERS[sampler]
    kw = {} if sampler == "ddpm" else {"eta": eta}
    out = fn(SelfCondModel(model, puzzle_tokens), x_T, schedule, generator=generator, steps=steps,
             return_path=return_path, sigma_floor=sigma_floor, **kw)
    return out if return_path else out.x0


def _batches(reader: TraceReader, batch: int, seed: int, epoch: int):
    return reader.batches(batch, np.random.default_rng([seed, 3, epoch]),
                          fields=["y", "z", "puzzle", "solution", "logits"])


def train_distill(params: Params, traces_dir: str | Path, teacher, out_path: str | Path, *,
                  resume_path: str | Path | None = None, tracker: Tracker | None = None,
                  progress: bool = True, log_every: int = 50) -> dict:
    """`teacher` is the frozen TRM (EMA weights). Writes the final checkpoint, returns metrics."""
    cfg, tracker = params.distill, tracker or Tracker()
    device = resolve_device(params.common.device)
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
    stdz = fit_standardizer(reader, layout)

    def trajectory(shard: dict) -> torch.Tensor:  # (B, R, L, C) raw states; R = 1 for the control
        x = state_tensor(shard, layout, dtype)
        return x[:, -1:] if cfg.final_only else x

    k, l, c = trajectory(reader.load_shard(0, ["y", "z"])).shape[1:]
    model = Denoiser(cfg.denoiser, k, l, c, teacher.vocab, prefix=layout.prefix).to(device)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    codec = Codec(teacher, layout, stdz, projection)
    if cfg.dynamics_weight:
        codec.check_dynamics()
    schedule = make_schedule(cfg.schedule, cfg.T, cfg.shift)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema, warmup=True)
    gen = torch.Generator().manual_seed(params.common.seed)
    step, epoch, pos, history = 0, 0, 0, []
    key = {"distill": asdict(cfg), "seed": params.common.seed, "traces": reader.manifest["header"]}
    resume_path = Path(resume_path) if resume_path else None
    ck = checkpoint.restore(resume_path, key, device, model, ema, opt, gen)
    if ck is not None:
        step, epoch, pos, history = ck["step"], ck["epoch"], ck["pos"], ck["history"]
    vdata = val.load_shard(0, ["y", "z", "puzzle", "solution"])
    vn = min(cfg.eval_limit, len(vdata["puzzle"]))
    v_tokens = torch.as_tensor(to_tokens(vdata["puzzle"][:vn]), device=device)
    v_sol = torch.as_tensor(to_tokens(vdata["solution"][:vn]), device=device)

    def evaluate_ema() -> tuple[float, float]:
        """(exact, cell) accuracy of the EMA model's samples on the first validation puzzles."""
        x = generate(ema.model, v_tokens, schedule, sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta,
                     generator=torch.Generator().manual_seed(params.common.seed + 1))
        right = codec.answer_logits(x).argmax(-1) == v_sol
        return float(right.all(-1).float().mean()), float(right.float().mean())

    def save(path: Path, final: bool) -> None:
        payload = {"kind": "tdrm", "model": model.state_dict(), "ema": ema.state_dict(), "step": step,
                   "config": {"distill": asdict(cfg), "common": asdict(params.common), "profile": params.profile},
                   "shape": [k, l, c], "layout": asdict(layout), "stats": stdz.state_dict(), "projection": projection,
                   "teacher": {"model": teacher.state_dict(), "config": asdict(teacher.cfg),
                               "cells": teacher.cells, "vocab": teacher.vocab},
                   "traces_header": reader.manifest["header"], "history": history}
        if not final:
            payload.update(optimizer=opt.state_dict(), generator=gen.get_state(), epoch=epoch, pos=pos,
                           resume_key=key)
        checkpoint.save(path, payload)

    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"distill.lr_schedule must be constant or cosine, got {cfg.lr_schedule!r}")

    def lr_at(i: int) -> float:
        if cfg.lr_schedule == "cosine":
            return warmup_cosine(i, cfg.lr, cfg.warmup, cfg.steps)
        return warmup_constant(i, cfg.lr, cfg.warmup)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", disable=not progress, mininterval=2)
    it, window = None, []
    model.train()
    while step < cfg.steps:
        if it is None:
            it = _batches(reader, cfg.batch, params.common.seed, epoch)
            for _ in range(pos):
                next(it)
        batch = next(it, None)
        if batch is None:
            it, epoch, pos = None, epoch + 1, 0
            continue
        pos += 1
        x0 = stdz.forward(trajectory(batch)).to(device)  # (B, K, L, C)
        puzzle = torch.as_tensor(to_tokens(batch["puzzle"]), device=device)  # (B, L)
        if cfg.ce_target == "solution":
            target = torch.as_tensor(to_tokens(batch["solution"]), device=device)
        else:
            target = torch.as_tensor(batch["logits"][:, -1].argmax(-1), device=device).long()
        b = x0.shape[0]
        t = torch.randint(1, cfg.T + 1, (b,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        x_t = q_sample(x0, t, schedule, eps)
        prev = None
        if cfg.denoiser.self_cond and torch.rand((), generator=gen).item() < cfg.self_cond_prob:
            with torch.no_grad():
                prev = model(x_t, t, puzzle)
        x0_hat = model(x_t, t, puzzle, prev)
        mse = denoising_mse(x0_hat, x0, loss_weights(schedule, t, cfg.loss_weighting))
        ce = answer_ce(codec.answer_logits(x0_hat), target)
        loss = mse + cfg.ce_weight * ce
        dyn = torch.zeros(())
        if cfg.dynamics_weight:
            dyn = codec.dynamics_residual(x0_hat, puzzle).square().mean()
            loss = loss + cfg.dynamics_weight * dyn
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        step += 1
        bar.update(1)
        window.append((mse.item(), ce.item(), dyn.item()))
        if step % log_every == 0 or step == cfg.steps:
            row = {"step": step, "mse": float(np.mean([w[0] for w in window])),
                   "ce": float(np.mean([w[1] for w in window])), "minutes": (time.perf_counter() - t0) / 60}
            if cfg.dynamics_weight:
                row["dynamics"] = float(np.mean([w[2] for w in window]))
            window = []
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                row["val_exact_ema"], row["val_cell_ema"] = evaluate_ema()
                model.train()
            tracker.log_row("distill", row)
            history.append(row)
            bar.set_postfix(mse=f"{row['mse']:.3f}", ce=f"{row['ce']:.3f}")
        if resume_path and cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save(resume_path, final=False)
    bar.close()
    checkpoint.finish(save, out_path, resume_path)
    last = history[-1] if history else {}
    return {"steps": step, "minutes": (time.perf_counter() - t0) / 60, "final_mse": last.get("mse"),
            "final_ce": last.get("ce"), "val_exact_accuracy_ema": last.get("val_exact_ema"),
            "params": sum(p.numel() for p in model.parameters()), "history": history}


def load_tdrm(path: str | Path, device="cpu"):
    """(denoiser with EMA weights, codec (with the frozen teacher), schedule, checkpoint)."""
    from ..config import Model, section_from_dict
    from ..models.trm import TRM

    ck = checkpoint.load(path, map_location=device)
    if ck.get("kind") != "tdrm":
        raise checkpoint.CheckpointError(f"{path} holds a {ck.get('kind')!r} model, not a TDRM denoiser")
    from ..config import Distill
    dcfg = section_from_dict(Distill, ck["config"]["distill"])
    k, l, c = ck["shape"]
    tinfo = ck["teacher"]
    teacher = TRM(section_from_dict(Model, tinfo["config"]), tinfo["cells"], tinfo["vocab"]).to(device)
    teacher.load_state_dict(tinfo["model"])
    teacher.eval()
    # checkpoints written before states z / prefix positions existed carry no layout
    layout = Layout(**ck["layout"]) if "layout" in ck else Layout.of(dcfg.state, teacher.cfg,
                                                                     ck["traces_header"]["config"])
    model = Denoiser(dcfg.denoiser, k, l, c, tinfo["vocab"], prefix=layout.prefix).to(device)
    model.load_state_dict(ck["ema"])
    model.eval()
    codec = Codec(teacher, layout, Standardizer(ck["stats"]["mean"], ck["stats"]["std"]), ck["projection"])
    return model, codec, make_schedule(dcfg.schedule, dcfg.T, dcfg.shift), ck
