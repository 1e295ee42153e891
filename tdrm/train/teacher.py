"""Deep-supervision training of the TRM teacher (METHOD.md section 1).

The carry persists across optimizer steps: each step runs one supervision step for every batch
slot; a slot whose puzzle halts (q > 0, or N_sup reached; with probability `halt_explore` a
random minimum of 2..N_sup steps is forced first) is refilled with a fresh puzzle and fresh
initial states. Everything the run depends on (weights, EMA, optimizer, carry, data stream and
generator states) goes into the resume checkpoint, so a killed run resumed from it ends with
the same weights as an uninterrupted one.

Data parallel (`world` of several ranks, under torchrun): rank r holds the slots `dist.rows(B, world)`
of the global batch B; the halted mask is gathered so every rank refills from the same stream in
the same order, and halting draws its random numbers for all B slots, so the run equals the
one-process run up to floating-point summation order. Gradients are averaged by DDP; rank 0 writes.

The task is a data source (`data`, the seam of `tdrm/tasks/sudoku.py`): Sudoku's dataset directory
by default, or ARC's (`tdrm/tasks/arc/teacher_data.py`), whose rows carry puzzle ids; with
`model.puzzles` > 1 the puzzle-embedding table is trained by sign-SGD on the rows each step used
(`teacher.puzzle_emb_lr`, `puzzle_emb_weight_decay`, the same warmup), everything else by the
configured optimizer.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Params
from ..device import check_amp, maybe_compile, resolve_device
from ..dist import SINGLE, World, all_mean, barrier, gather_rows, per_rank_batch, rows, wrap
from ..models.losses import TRM_STATS, trm_loss_terms
from ..models.trm import TRM, count_params
from ..tasks.sudoku import SudokuTeacherData
from ..tracking.base import Tracker
from .. import checkpoint
from .optim import EMA, SparseSignSGD, make_optimizer, warmup_constant


@dataclass
class Carry:
    y: torch.Tensor  # (B, L, D)
    z: torch.Tensor  # (B, L, D)
    steps: torch.Tensor  # (B,) supervision steps taken on the current puzzle
    halted: torch.Tensor  # (B,) bool: refill before the next step
    tokens: torch.Tensor  # (B, C) puzzle tokens
    labels: torch.Tensor  # (B, C) solution tokens (-100: ignored by the loss)
    ids: torch.Tensor  # (B,) puzzle ids (rows of the puzzle-embedding table; 0 for Sudoku)


def new_carry(model: TRM, batch: int, cells: int, device) -> Carry:
    y, z = model.initial_state(batch)
    zeros = torch.zeros(batch, cells, dtype=torch.long, device=device)
    return Carry(y.to(device), z.to(device), torch.zeros(batch, dtype=torch.long, device=device),
                 torch.ones(batch, dtype=torch.bool, device=device), zeros, zeros.clone(),
                 torch.zeros(batch, dtype=torch.long, device=device))


def refill(carry: Carry, model: TRM, stream, world: World = SINGLE) -> Carry:
    """Give halted slots a new puzzle (tokens, labels, id from the data source's `stream`) and the
    initial y/z. With several ranks every rank draws the puzzles of ALL halted slots of the global
    batch (in global slot order) and keeps its own."""
    halted = gather_rows(carry.halted, world)  # (B_global,)
    idx = torch.nonzero(halted).squeeze(-1)
    if len(idx) == 0:
        return carry
    tok, lab, ids = stream.next(len(idx))
    if world.distributed:
        sl = rows(len(halted), world)
        mine = ((idx >= sl.start) & (idx < sl.stop)).cpu().numpy()
        idx, tok, lab, ids = idx[torch.as_tensor(mine)] - sl.start, tok[mine], lab[mine], ids[mine]
        if len(idx) == 0:
            return carry
    dev = carry.y.device
    idx = idx.to(dev)
    carry.tokens[idx] = torch.as_tensor(tok, device=dev)
    carry.labels[idx] = torch.as_tensor(lab, device=dev)
    carry.ids[idx] = torch.as_tensor(ids, device=dev)
    carry.y[idx] = model.y_init.to(carry.y.dtype)
    carry.z[idx] = model.z_init.to(carry.z.dtype)
    carry.steps[idx] = 0
    carry.halted[idx] = False
    return carry


def halting(q: torch.Tensor, steps: torch.Tensor, n_sup: int, explore: float,
            generator: torch.Generator, world: World = SINGLE, total: int | None = None) -> torch.Tensor:
    """Which slots halt after this step: q > 0 or N_sup reached; exploration forces a random
    minimum of 2..N_sup steps on a fraction `explore` of slots (TRM/HRM ACT). Randomness is drawn
    on the CPU generator so runs repeat on any device; with several ranks it is drawn for all
    `total` slots of the global batch and each rank keeps its rows."""
    b = q.shape[0] if total is None else total
    rand = torch.rand(b, generator=generator)
    min_steps = torch.randint(2, n_sup + 1, (b,), generator=generator)
    if total is not None:
        sl = rows(total, world)
        rand, min_steps = rand[sl], min_steps[sl]
    min_steps = torch.where(rand < explore, min_steps, torch.zeros_like(min_steps)).to(q.device)
    return (steps >= n_sup) | ((q > 0) & (steps >= min_steps))


def train_forward(model: TRM, y: torch.Tensor, z: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor,
                  q_weight: float, ids: torch.Tensor | None = None):
    """One supervision step's forward and loss (what `common.compile` compiles; `model` is the TRM or
    its DistributedDataParallel wrapper): the new (y, z),
    the halting logit q (B,), the loss and its stats (TRM_STATS order). `ids`: puzzle ids (B,) for a
    model with several puzzle embeddings, else None."""
    y, z, logits, q = model(y, z, tokens, ids)  # TRM.forward: embedding + one supervision step (DDP or not)
    loss, terms, _ = trm_loss_terms(logits, q, labels, q_weight)
    return y, z, q, loss, terms


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN (no slot halted in that step)
    return float(np.mean(values)) if values else float("nan")


def _resume_key(params: Params, meta: dict) -> dict:
    return {"teacher": asdict(params.teacher), "seed": params.common.seed, "data": meta}


def train_teacher(params: Params, data_dir: str | Path | None, out_path: str | Path, *,
                  resume_path: str | Path | None = None, tracker: Tracker | None = None,
                  progress: bool = True, log_every: int = 50, world: World = SINGLE,
                  device: torch.device | None = None, data=None) -> dict:
    """Train, write the final checkpoint to `out_path`, return summary metrics and the curve.
    `world`: this rank's place in a data-parallel job (`tdrm.dist.setup`); only rank 0 writes.
    `data`: the task's data source (module docstring); None = the Sudoku dataset in `data_dir`."""
    cfg, tracker = params.teacher, tracker or Tracker()
    device = device or resolve_device(params.common.device)
    local_batch = per_rank_batch(cfg.batch, world, "teacher.batch")
    data = data if data is not None else SudokuTeacherData(data_dir, cfg.eval_limit)
    meta = data.meta
    if cfg.model.puzzles != data.puzzles:
        raise ValueError(f"teacher.model.puzzles = {cfg.model.puzzles}, but the data has {data.puzzles} puzzle ids "
                         f"(one per task and augmentation): set teacher.model.puzzles: {data.puzzles}")
    model = TRM(cfg.model, data.cells, data.vocab).to(device)
    table = [model.puzzle_emb] if data.puzzles > 1 else []  # sign-SGD on the used rows (ARC)
    dense = [p for p in model.parameters() if all(p is not t for t in table)]
    opt = make_optimizer(cfg.optimizer, dense, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    sign = SparseSignSGD(table, cfg.puzzle_emb_lr, cfg.puzzle_emb_weight_decay) if table else None
    ema = EMA(model, cfg.ema)
    stream = data.stream(params.common.seed, cfg.augment)
    gen = torch.Generator().manual_seed(params.common.seed)
    carry = new_carry(model, local_batch, data.cells, device)
    step, history, elapsed = 0, [], 0.0
    resume_path = Path(resume_path) if resume_path else None
    key = _resume_key(params, meta)
    ck = checkpoint.restore(resume_path, key, device, model, ema, opt, gen, world_size=world.size)
    if ck is not None:
        stream.load_state(ck["stream"])
        if sign is not None:
            sign.load_state_dict(ck["sign_optimizer"])
        mine = rows(cfg.batch, world)  # the checkpoint holds the global carry
        carry = Carry(**{k: v[mine].to(device) for k, v in ck["carry"].items()})
        step, history, elapsed = ck["step"], ck["history"], ck["elapsed"]

    def save(path: Path, final: bool) -> None:
        """Every rank calls it (the carry is gathered); rank 0 writes."""
        global_carry = None if final else {k: gather_rows(v, world).cpu() for k, v in asdict(carry).items()}
        if not world.main:
            return
        payload = {"kind": "teacher", "model": model.state_dict(), "ema": ema.state_dict(),
                   "step": step, "config": {"teacher": asdict(cfg), "common": asdict(params.common),
                                            "profile": params.profile},
                   "data_meta": meta, "history": history, "elapsed": elapsed, "world_size": world.size}
        if not final:
            payload.update(optimizer=opt.state_dict(), stream=stream.state(), generator=gen.get_state(),
                           carry=global_carry, resume_key=key)
            if sign is not None:
                payload["sign_optimizer"] = sign.state_dict()
        else:
            payload.update(optimizer=opt.state_dict())
        checkpoint.save(path, payload)

    net = wrap(model, world, device)  # DDP over ranks (the model itself in one process)
    amp = check_amp(params.common.amp)
    if cfg.accum < 1 or local_batch % cfg.accum:
        raise ValueError(f"teacher.accum = {cfg.accum} must be >= 1 and divide the per-rank batch {local_batch} "
                         f"(teacher.batch {cfg.batch} / {world.size} processes)")
    micro = [rows(local_batch, World(rank=i, size=cfg.accum)) for i in range(cfg.accum)]  # slot micro-batches
    forward = maybe_compile(train_forward, params.common.compile)
    use_ids = data.puzzles > 1  # pass puzzle ids to the model (ARC) or None (Sudoku)
    model.train()
    t_start = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, desc="teacher", disable=not progress or not world.main, mininterval=2)
    window: list[dict] = []
    last_val = float("nan")
    while step < cfg.steps:
        carry = refill(carry, model, stream, world)
        lr = warmup_constant(step, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        if sign is not None:
            for g in sign.param_groups:
                g["lr"] = warmup_constant(step, cfg.puzzle_emb_lr, cfg.warmup)
            sign.zero_grad(set_to_none=True)
        parts = []
        for i, mb in enumerate(micro):  # gradient accumulation over slot micro-batches (one without accum)
            sync = nullcontext() if not world.distributed or i == len(micro) - 1 else net.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = forward(net, carry.y[mb], carry.z[mb], carry.tokens[mb], carry.labels[mb], cfg.q_loss_weight,
                                  carry.ids[mb] if use_ids else None)
                frac = (mb.stop - mb.start) / local_batch
                (out[3] * frac if frac != 1.0 else out[3]).backward()
            parts.append((out, frac))
        if len(parts) == 1:
            y, z, q, loss, terms = parts[0][0]
        else:
            y, z, q = (torch.cat([o[j] for o, _ in parts]) for j in range(3))
            terms = sum(o[4] * f for o, f in parts)
        stats = dict(zip(TRM_STATS, terms.tolist()))
        if cfg.grad_clip > 0:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        if sign is not None:
            sign.step()
        ema.update(model)
        with torch.no_grad():
            carry.steps += 1
            carry.halted = halting(q.detach(), carry.steps, cfg.model.n_sup, cfg.model.halt_explore, gen,
                                   world, cfg.batch if world.distributed else None)
            carry.y, carry.z = y.detach(), z.detach()
        step += 1
        stats["halt_steps"] = float(carry.steps[carry.halted].float().mean()) if carry.halted.any() else float("nan")
        window.append(stats)
        bar.update(1)
        if step % log_every == 0 or step == cfg.steps:
            avg = {k: _mean([w[k] for w in window]) for k in window[0]}
            avg = dict(zip(avg, all_mean(list(avg.values()), world)))  # over ranks (equal slots)
            avg.update(step=step, lr=lr, minutes=(time.perf_counter() - t_start) / 60)
            window = []
            for k in ("lm_loss", "q_loss", "cell_acc", "exact_acc", "halt_steps"):
                tracker.log_scalar(f"train.{k}", avg[k], step)
            if world.main and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                score = data.validate(ema.model, cfg.batch * 2, device)
                avg["val_exact_ema"] = score
                tracker.log_scalar("val.exact_accuracy_ema", score, step)
                model.train()
            history.append(avg)
            last_val = avg.get("val_exact_ema", last_val)
            bar.set_postfix(loss=f"{avg['lm_loss']:.3f}", exact=f"{avg['exact_acc']:.3f}",
                            val_ema=f"{last_val:.3f}")
        elapsed = time.perf_counter() - t_start
        if resume_path and cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save(resume_path, final=False)
    bar.close()
    elapsed = time.perf_counter() - t_start
    checkpoint.finish(save, out_path, resume_path, world.main)
    barrier(world)
    last_val = next((h["val_exact_ema"] for h in reversed(history) if "val_exact_ema" in h), None)
    return {"steps": step, "minutes": elapsed / 60, "params": count_params(model),
            "final_lm_loss": history[-1]["lm_loss"] if history else None,
            "final_train_exact": history[-1]["exact_acc"] if history else None,
            "val_exact_accuracy_ema": last_val, "val_n": data.val_n, "history": history}
