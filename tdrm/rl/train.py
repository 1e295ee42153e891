"""The RL stage's loop: an RL estimator (`rl.estimator`: grpo, awm, spg, rft, or the elbo ablation) on a
distilled TDRM, with resume and evaluation.

Each step draws `rl.puzzles` training puzzles (epoch e shuffled by rng (seed, 4, e); with
`rl.curriculum: rating` a weighted shuffle that puts harder puzzles earlier), samples
`rl.group_size` trajectories per puzzle with stochastic DDIM (`rl.sample_steps`, `rl.eta`,
`rl.sde_window`; a per-cell model's rollouts draw their cell order around the confidence order with
`rl.order_temperature` > 0, an exploration grpo refuses because its step log-probabilities carry no term
for the draw), decodes and rewards them without labels, and updates the policy. grpo, awm, spg
and elbo drop groups whose rewards are all equal (zero advantage; counted as skipped), and with
`rl.filter_groups` replace them by fresh puzzles (more rollouts, counted in `rollout_puzzles`); rft
keeps the samples that pass the validity check, from any group. The frozen reference is the
distilled model itself.

On ARC data (`data.task: arc`, the data directory says so) a rollout row is one of the set's training
rows (a demonstration pair, or a train task's test pair, with its puzzle id), its reward 1[the decoded
canvas equals the row's output] + dense_weight x the share of the output's cells right
(`tasks.arc.rl`); validation is dev-task pass@2 and `before_after` scores the test tasks (pass@2,
voted over augmentations). No held-out output is read.

Data parallel (`world`, under torchrun): every rank follows the same epoch order and takes its
`dist.rows` slice of each draw of puzzles (rl.puzzles divides over the ranks; a group never
straddles ranks), samples with its own generator (seed + rank x `RL_RANK_SEED`), and the ranks'
gradients are summed weighted by their kept samples before each optimizer step
(`dist.gradient_sync`; a rank that kept no group steps with the others' gradients). filter_groups
refills the global shortfall from the shared stream. Statistics are gathered (counts summed, the
rest averaged over ranks), validation and the test evaluation split their puzzles, rank 0 writes.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Params
from ..data.board import logits_to_digits, to_tokens
from ..data.dataset import load_split
from ..device import resolve_device
from ..dist import SINGLE, World, all_gather_objects, gradient_sync, per_rank_batch, rows
from ..eval.metrics import mcnemar_exact
from ..eval.tdrm import evaluate_tdrm
from ..tracking.base import Tracker
from .. import checkpoint
from ..checkpoint import load_tdrm
from ..diffusion.sampling import generate
from ..diffusion.samplers import check_window
from ..tasks import data_task
from ..traces.store import sha256_file
from .estimators import awm_advantages, curriculum_weights, rft_keep, spg_advantages, weighted_order
from .grpo import group_advantages
from .phase import UPDATES, Batch, concat, idle_update, subset
from .reward import reward
from ..rng import RL_ORDER, RL_RANK_SEED, VALIDATION_SAMPLING, stream

COUNTS = ("skipped_groups", "groups", "trained_samples", "rollout_puzzles", "refilled_groups")


def gather_stats(stats: dict, world: World) -> dict:
    """One step's statistics over ranks: the counts (`COUNTS`) summed, every other value averaged
    over the ranks that have it (ranks hold equal numbers of puzzles)."""
    if not world.distributed:
        return stats
    every = all_gather_objects(stats, world)
    keys = dict.fromkeys(k for st in every for k in st)
    return {k: (sum if k in COUNTS else lambda v: sum(v) / len(v))([st[k] for st in every if k in st])
            for k in keys}


def _check(cfg) -> None:
    if cfg.estimator not in UPDATES:
        raise ValueError(f"rl.estimator must be one of {sorted(UPDATES)}, got {cfg.estimator!r}")
    if cfg.group_size < 2:
        raise ValueError(f"rl.group_size must be >= 2 (advantages are relative to the group), got {cfg.group_size}")
    if cfg.estimator == "grpo" and cfg.eta <= 0 and cfg.sigma_floor <= 0:
        raise ValueError("GRPO needs stochastic rollouts: set rl.eta > 0 or rl.sigma_floor > 0")
    if not 0 < cfg.train_step_fraction <= 1:
        raise ValueError(f"rl.train_step_fraction must be in (0, 1], got {cfg.train_step_fraction}")
    if cfg.sde_window is not None:
        check_window(cfg.sde_window, cfg.sample_steps)
    if cfg.curriculum not in ("none", "rating"):
        raise ValueError(f"rl.curriculum must be none or rating, got {cfg.curriculum!r}")
    if cfg.max_rollout_rounds < 1:
        raise ValueError(f"rl.max_rollout_rounds must be >= 1, got {cfg.max_rollout_rounds}")
    if cfg.awm_levels < 1:
        raise ValueError(f"rl.awm_levels must be >= 1, got {cfg.awm_levels}")
    if not 0 < cfg.awm_max_level <= 1:
        raise ValueError(f"rl.awm_max_level must be in (0, 1], got {cfg.awm_max_level}")
    if cfg.spg_beta <= 0:
        raise ValueError(f"rl.spg_beta must be > 0, got {cfg.spg_beta}")
    if not 0 <= cfg.spg_mix <= 1:
        raise ValueError(f"rl.spg_mix must be in [0, 1], got {cfg.spg_mix}")
    if cfg.anchor_beta < 0:
        raise ValueError(f"rl.anchor_beta must be >= 0, got {cfg.anchor_beta}")
    if cfg.renoise_order not in ("fresh", "rollout"):
        raise ValueError(f"rl.renoise_order must be fresh or rollout, got {cfg.renoise_order!r}")
    if not cfg.order_temperature >= 0:
        raise ValueError(f"rl.order_temperature must be >= 0, got {cfg.order_temperature}")
    if cfg.order_temperature > 0 and cfg.estimator == "grpo":
        raise ValueError("rl.order_temperature > 0 draws the cell order at random, and grpo's step log-probabilities "
                         "carry no term for that draw: use awm, spg, rft or elbo, or set rl.order_temperature: 0")


def rollout_batch(model, codec, schedule, puzzles: np.ndarray, shape, cfg, generator: torch.Generator, device
                  ) -> tuple[Batch | None, dict]:
    """Sample G trajectories for each of P Sudoku puzzles (digits, (P, N)); reward them without labels
    (`reward`) and form advantages (`group_rollouts`)."""
    g = cfg.group_size
    digits = torch.as_tensor(puzzles, device=device).long().repeat_interleave(g, 0)  # (S, N)

    def score(logits: torch.Tensor) -> torch.Tensor:  # (S, N, V) -> (S,)
        return reward(digits, logits_to_digits(logits), shape, cfg.dense_weight)
    return group_rollouts(model, codec, schedule, to_tokens(puzzles), score, cfg, generator, device)


def arc_rollout_batch(model, codec, schedule, tokens: np.ndarray, labels: np.ndarray, cfg, generator: torch.Generator,
                      device) -> tuple[Batch | None, dict]:
    """Sample G trajectories for each of P ARC training rows (condition tokens (P, N + 1), output
    canvases (P, N)), rewarded against their outputs (`tasks.arc.rl.canvas_reward`)."""
    from ..tasks.arc.rl import canvas_reward
    lab = torch.as_tensor(labels, device=device).long().repeat_interleave(cfg.group_size, 0)  # (S, N)

    def score(logits: torch.Tensor) -> torch.Tensor:
        return canvas_reward(logits.argmax(-1), lab, cfg.dense_weight)
    return group_rollouts(model, codec, schedule, tokens, score, cfg, generator, device)


def group_rollouts(model, codec, schedule, tokens: np.ndarray, score, cfg, generator: torch.Generator, device
                   ) -> tuple[Batch | None, dict]:
    """G trajectories for each of P conditions (tokens (P, N')), scored by `score` (decoded answer
    logits (S, N, V) -> rewards (S,)); advantages per the estimator. Returns the batch of groups with
    reward variance (None if none) and rollout statistics."""
    g = cfg.group_size
    tokens = torch.as_tensor(tokens, device=device).long().repeat_interleave(g, 0)  # (S, N')
    sample = generate(model, tokens, schedule, sampler="ddim", steps=cfg.sample_steps, eta=cfg.eta,
                      generator=generator, return_path=True, sigma_floor=cfg.sigma_floor, window=cfg.sde_window,
                      confidence=codec.cell_confidence, order_temperature=cfg.order_temperature)
    with torch.no_grad():
        r = score(codec.answer_logits(sample.x0)).view(-1, g)  # (P, G)
    solved = (r >= 1).float()
    varies = r.std(-1, unbiased=False) > 0  # (P,)
    if cfg.estimator == "rft":  # the validity-checked samples of every group, each with weight 1
        keep = rft_keep(r)  # (P, G)
        adv = keep.float()
        skipped = ~keep.any(-1)
    else:
        adv = awm_advantages(r, cfg.adv_eps, cfg.adv_clip) if cfg.estimator == "awm" else \
            spg_advantages(r) if cfg.estimator == "spg" else group_advantages(r, cfg.adv_eps, cfg.adv_clip)
        keep = varies[:, None].expand(-1, g)
        skipped = ~varies
    stats = {"reward_mean": float(r.mean()), "reward_std": float(r.std(-1, unbiased=False).mean()),
             "solve_rate": float(solved.mean()), "skipped_groups": int(skipped.sum()),
             "groups": int(varies.numel()), "trained_samples": int(keep.sum())}
    if not keep.any():
        return None, stats
    idx = keep.reshape(-1).nonzero().squeeze(-1)
    return Batch(tokens[idx], subset(sample, idx), adv.reshape(-1)[idx], model.cfg.self_cond), stats


def train_rl(params: Params, tdrm_path: str | Path, data_dir: str | Path, out_path: str | Path, *,
             resume_path: str | Path | None = None, tracker: Tracker | None = None, progress: bool = True,
             log_every: int = 1, world: World = SINGLE, device=None) -> dict:
    """Writes `out_path` (a TDRM checkpoint whose weights are the RL policy; `tdrm eval` reads it
    and defaults to the rollout's number of steps) and returns metrics with the training history.
    `world`: this process's place under torchrun (module docstring); rank 0 writes."""
    cfg, tracker = params.rl, tracker or Tracker()
    _check(cfg)
    local = per_rank_batch(cfg.puzzles, world, "rl.puzzles")  # this rank's puzzles per rollout batch
    device = device if device is not None else resolve_device(params.common.device)
    model, codec, schedule, ck = load_tdrm(tdrm_path, device)
    if cfg.sde_window is not None and (getattr(model, "row_lag", None) is not None
                                       or getattr(model, "cell_window", None) is not None):
        raise ValueError(f"rl.sde_window is a window of the shared-level DDIM chain; {tdrm_path} was trained with one "
                         f"noise level per row or per cell (distill.row_noise: "
                         f"{ck['config']['distill']['row_noise']}): set rl.sde_window: null")
    if cfg.renoise_order == "rollout" and getattr(model, "cell_window", None) is None:
        raise ValueError(f"rl.renoise_order rollout re-noises in the cell order each rollout chose; {tdrm_path} was "
                         f"not trained with one noise level per cell (distill.row_noise: "
                         f"{ck['config']['distill']['row_noise']}): set rl.renoise_order: fresh")
    if cfg.order_temperature > 0 and getattr(model, "cell_window", None) is None:
        raise ValueError(f"rl.order_temperature draws the cell order of per-cell rollouts; {tdrm_path} was not "
                         f"trained with one noise level per cell (distill.row_noise: "
                         f"{ck['config']['distill']['row_noise']}): set rl.order_temperature: 0")
    for p in codec.teacher.parameters():
        p.requires_grad_(False)
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    task = data_task(data_dir)
    if task == "arc":  # rollouts on the set's training rows, rewarded against their outputs (tasks/arc/rl.py)
        from ..tasks.arc.rl import dev_pass2, load_rollouts
        if cfg.curriculum != "none":
            raise ValueError("rl.curriculum rating orders Sudoku puzzles by the exact solver's rating; ARC has none: "
                             "set rl.curriculum: none")
        arc_rows = load_rollouts(data_dir, model)
        n_train = arc_rows.size
    else:
        train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        if train.shape.cells != codec.teacher.cells:
            raise ValueError(f"size mismatch: {tdrm_path} models {codec.teacher.cells}-cell boards, "
                             f"{data_dir} holds {train.shape.cells}-cell puzzles")
        n_train = len(train)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(params.common.seed + RL_RANK_SEED * world.rank)
    update = UPDATES[cfg.estimator]
    step, epoch, pos, history = 0, 0, 0, []
    key = {"rl": asdict(cfg), "seed": params.common.seed, "tdrm_sha256": sha256_file(Path(tdrm_path))}
    resume_path = Path(resume_path) if resume_path else None
    if resume_path and resume_path.is_file():
        rk = checkpoint.load(resume_path, map_location=device)
        if rk.get("resume_key") == key:
            if rk.get("world_size", 1) != world.size:
                raise ValueError(f"{resume_path} was written by {rk.get('world_size', 1)} processes; this run has "
                                 f"{world.size}: resume at the same world size (dist.nproc x nodes) or delete it")
            model.load_state_dict(rk["model"])
            opt.load_state_dict(rk["optimizer"])
            gens = rk["generator"] if isinstance(rk["generator"], list) else [rk["generator"]]
            gen.set_state(gens[world.rank])
            step, epoch, pos, history = rk["step"], rk["epoch"], rk["pos"], rk["history"]
            if world.main:
                print(f"resuming from {resume_path} at step {step}")
        elif world.main:
            print(f"ignoring {resume_path}: it belongs to another config or model")
    val_set = None if task == "arc" else val.take(np.arange(min(cfg.val_limit, len(val))))

    def val_accuracy() -> float:
        """Sudoku: exact accuracy on the first rl.val_limit validation puzzles; ARC: pass@2 on the dev
        tasks (every rank computes it: the sampler's draws do not split over ranks there)."""
        model.eval()
        if task == "arc":
            return dev_pass2(model, codec, schedule, arc_rows.arc, cfg.sample_steps,
                             params.common.seed + VALIDATION_SAMPLING, params.evaluate.batch_size, device)
        r = evaluate_tdrm(model, codec, schedule, val_set, sampler="ddim", steps=cfg.sample_steps, eta=0.0,
                          samples=1, seed=params.common.seed + VALIDATION_SAMPLING,
                          batch_size=params.evaluate.batch_size, device=device, world=world)
        return r["exact_accuracy"]

    def save(path: Path, final: bool) -> None:
        """Rank 0 writes; every rank calls it (the generators are gathered for the resume file)."""
        gens = all_gather_objects(gen.get_state(), world) if not final else None
        if not world.main:
            return
        dcfg = {**ck["config"]["distill"], "sampler": "ddim", "sample_steps": cfg.sample_steps, "eta": 0.0}
        payload = {**{k: v for k, v in ck.items() if k not in ("format", "optimizer", "generator")},
                   "model": model.state_dict(), "ema": model.state_dict(), "step": step,
                   "config": {**ck["config"], "distill": dcfg, "rl": asdict(cfg)},
                   "rl": {"from": str(tdrm_path), "from_sha256": key["tdrm_sha256"], "history": history}}
        if not final:
            payload.update(optimizer=opt.state_dict(), generator=gens if world.distributed else gens[0],
                           epoch=epoch, pos=pos, resume_key=key, history=history, world_size=world.size)
        checkpoint.save(path, payload)

    weights = curriculum_weights(train.ratings, cfg.curriculum_power) if cfg.curriculum == "rating" else None

    def epoch_order(e: int) -> np.ndarray:
        rng = stream(params.common.seed, RL_ORDER, e)
        return rng.permutation(n_train) if weights is None else weighted_order(weights, rng)

    def roll(ids: np.ndarray) -> tuple[Batch | None, dict]:
        """The rollout batch of the training rows `ids` (Sudoku puzzles or ARC training rows)."""
        if task == "arc":
            return arc_rollout_batch(model, codec, schedule, arc_rows.tokens(ids), arc_rows.labels(ids), cfg, gen,
                                     device)
        return rollout_batch(model, codec, schedule, train.puzzles[ids], train.shape, cfg, gen, device)

    def draw(n: int) -> np.ndarray:
        """The next n puzzles of the epoch stream (a new epoch when this one is used up)."""
        nonlocal epoch, pos, order
        if pos + n > len(order):
            epoch, pos = epoch + 1, 0
            order = epoch_order(epoch)
        idx = order[pos:pos + n]
        pos += n
        return idx

    def rollouts() -> tuple[Batch | None, dict]:
        """This rank's rollout batch; with rl.filter_groups, groups without reward variance are replaced
        by fresh puzzles for up to rl.max_rollout_rounds rounds in all (each round's rollouts counted):
        every round draws the global shortfall and each rank takes its own."""
        batch, stats = roll(draw(cfg.puzzles)[rows(cfg.puzzles, world)])
        stats["rollout_puzzles"] = local
        if not cfg.filter_groups or cfg.estimator == "rft":
            return batch, stats
        batches = [] if batch is None else [batch]
        have, rounds = stats["groups"] - stats["skipped_groups"], 1
        while rounds < cfg.max_rollout_rounds:
            short = [local - h for h in all_gather_objects(have, world)]  # every rank's shortfall
            if not sum(short):
                break
            ids = draw(sum(short))
            first = sum(short[:world.rank])
            more = short[world.rank]
            rounds += 1
            if not more:
                continue
            b, st = roll(ids[first:first + more])
            stats["rollout_puzzles"] += more
            stats["refilled_groups"] = stats.get("refilled_groups", 0) + st["groups"] - st["skipped_groups"]
            for k in ("skipped_groups", "groups", "trained_samples"):
                stats[k] += st[k]
            if b is not None:
                batches.append(b)
            have += st["groups"] - st["skipped_groups"]
        stats["rollout_rounds"] = rounds
        return (concat(batches) if batches else None), stats

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"rl {cfg.estimator}", disable=not progress or not world.main,
               mininterval=2)
    window: list[dict] = []
    order = epoch_order(epoch)
    while step < cfg.steps:
        model.eval()
        batch, stats = rollouts()
        n_local = 0 if batch is None else int(batch.adv.shape[0])
        n_all = sum(all_gather_objects(n_local, world)) if world.distributed else n_local
        if n_all:  # some rank kept a group: every rank steps (with the gradient sum under torchrun)
            model.train()
            sync = gradient_sync(model, n_local, n_all, world)
            stats.update(update(model, ref, opt, batch, schedule, cfg, gen, sync=sync) if batch is not None
                         else idle_update(model, opt, cfg, sync))
        stats = gather_stats(stats, world)
        step += 1
        bar.update(1)
        window.append(stats)
        if step % log_every == 0 or step == cfg.steps:
            keys = dict.fromkeys(k for w in window for k in w)
            row = {"step": step, **{k: float(np.mean([w[k] for w in window if k in w])) for k in keys},
                   "minutes": (time.perf_counter() - t0) / 60}
            row["skipped_groups"] = float(sum(w["skipped_groups"] for w in window))
            window = []
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                row["val_exact"] = val_accuracy()
            if world.main:
                tracker.log_row("rl", row)
            history.append(row)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", solved=f"{row['solve_rate']:.3f}")
        if resume_path and cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save(resume_path, final=False)
    bar.close()
    checkpoint.finish(save, out_path, resume_path, world.main)
    return {"steps": step, "minutes": (time.perf_counter() - t0) / 60, "history": history}


def before_after(params: Params, tdrm_path, rl_path, data_dir, device, progress: bool = True,
                 world: World = SINGLE) -> tuple[dict, list[dict]]:
    """Test-split exact accuracy of the distilled and the RL model (deterministic DDIM) at each of
    `rl.eval_steps` sampling steps, with CIs; the paired test at the rollout setting. Under torchrun
    every rank evaluates its rows and gets the gathered result."""
    cfg = params.rl
    if data_task(data_dir) == "arc":  # pass@2 on the test tasks, paired over test inputs (tasks/arc/rl.py)
        from ..tasks.arc.dataset import load_set
        from ..tasks.arc.rl import before_after_arc
        models = {name: load_tdrm(path, device)[:3] for name, path in (("before", tdrm_path), ("after", rl_path))}
        return before_after_arc(models, load_set(data_dir), sorted(set(cfg.eval_steps) | {cfg.sample_steps}),
                                cfg.sample_steps, params.common.seed, params.evaluate.batch_size, device)
    test = load_split(data_dir, "test")
    if cfg.eval_limit is not None:
        test = test.take(np.arange(min(cfg.eval_limit, len(test))))
    models = {name: load_tdrm(path, device) for name, path in (("before", tdrm_path), ("after", rl_path))}
    steps = sorted(set(cfg.eval_steps) | {cfg.sample_steps})
    rows, at = [], {}
    for s in steps:
        row = {"sampling_steps": s}
        for name, (m, codec, sched, _) in models.items():
            r = evaluate_tdrm(m, codec, sched, test, sampler="ddim", steps=s, eta=0.0, samples=1,
                              seed=params.common.seed, batch_size=params.evaluate.batch_size, device=device,
                              progress=progress and world.main, world=world)
            row[f"{name}_exact_accuracy"] = r["exact_accuracy"]
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = r["ci95"]
            if s == cfg.sample_steps:
                at[name] = r
        rows.append(row)
    b, a = at["before"], at["after"]
    metrics = {"n": len(test), "sampling_steps": cfg.sample_steps,
               "before": {"exact_accuracy": b["exact_accuracy"], "ci95": b["ci95"]},
               "after": {"exact_accuracy": a["exact_accuracy"], "ci95": a["ci95"]},
               "difference_points": 100 * (a["exact_accuracy"] - b["exact_accuracy"]),
               "paired_after_vs_before": mcnemar_exact(list(a["correct"]), list(b["correct"])),
               "accuracy_by_sampling_steps": rows}
    return metrics, rows
