"""Benchmarks that print tables: `python -m tdrm.bench trm`, `solver`, `tdrm`, `scaling` and `kernels`.

trm: training throughput (samples x supervision steps per second), inference puzzles per second
and peak memory, for the params profiles (default: the shipped default profile and the paper
config over a few steps); `--compile` adds the compiled step beside the eager one (compilation
time reported) and `--denoiser` the denoiser's training step at each profile's trajectory shape.
tdrm: TDRM checkpoints against their teacher on one split (issue 13's ablation table): exact
accuracy with 95% CI at the checkpoint's own sampler, exact McNemar paired tests against the
teacher and against the first checkpoint, decode accuracy per trajectory row, where the chain
decides the board (accuracy by denoiser call, cells still changing, early errors fixed later) and
inference FLOPs per puzzle, and the teacher-as-corrector baseline; all from one sampling chain
per checkpoint and puzzle (`seconds`: that chain's wall time, diagnosis and corrector included).
kernels: the whole-model rows of the kernel benchmark (tdrm/bench/kernels.py; GPU, or
`--device cpu --small` as a smoke run).
scaling: training throughput of the teacher, distill (and rl) loops under torchrun at 1, 2, ... processes
(tdrm/bench/scaling.py; samples per second and efficiency against the first count).
arc: the trivial ARC baseline (dihedral transform + colour map consistent with the demonstrations)
on ARC data versions, with the ARC Prize pass@1 / pass@2 and the strict rule (tdrm/tasks/arc);
with `--teacher CKPT --data DIR`, that teacher (voted over augmentations) and the baseline on the
held-out tasks of the data stage's ARC set, paired over test inputs and over tasks.
solver: the exact solver over a whole puzzle file: every puzzle must match its listed answer
(and rating); prints median / mean / p90 / max ms per puzzle.
"""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    return f"{cpu}; {dev}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _profile_params(profile: str, params_path: str, overrides: dict | None = None):
    """The params file in `profile`, with nested `overrides` applied after the profile."""
    import yaml

    from ..config import from_dict
    raw = yaml.safe_load(Path(params_path).read_text())
    raw["profile"] = profile
    return from_dict(raw, overrides=overrides)


def _shape_of(profile: str, p):
    from ..data.board import shape_for_n
    return shape_for_n(9 if profile == "paper" or p.data.source == "files" else p.data.size)


def _timed(run, steps: int, warmup: int, sync) -> tuple[float, float]:
    """(seconds of the first `warmup` calls, which include any compilation; seconds per call after)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return first, (time.perf_counter() - t0) / steps


def _syncer(device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def bench_trm(profile: str, params_path: str, steps: int, warmup: int, device, batch: int | None = None,
              infer_sup_steps: int | None = None, compile_: bool = False) -> dict:
    """The teacher's training step exactly as `train_teacher` runs it (`train_forward`, backward,
    optimizer); `compile_` compiles it as `common.compile` does, and `compile_s` is the time of the
    warm-up steps (compilation included). `infer_sup_steps`: supervision steps timed for inference,
    scaled to N_sup (default all)."""
    import dataclasses

    from ..device import maybe_compile
    from ..models.trm import TRM, count_params
    from ..train.optim import make_optimizer
    from ..train.teacher import train_forward

    p = _profile_params(profile, params_path)
    cfg = dataclasses.replace(p.teacher, batch=batch) if batch else p.teacher
    shape = _shape_of(profile, p)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = TRM(cfg.model, shape.cells, shape.vocab).to(device)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, shape.vocab, (cfg.batch, shape.cells), generator=g).to(device)
    labels = torch.randint(2, shape.vocab, (cfg.batch, shape.cells), generator=g).to(device)
    state = list(model.initial_state(cfg.batch))
    forward = maybe_compile(train_forward, compile_)
    sync = _syncer(device)

    def train_step():
        y, z, _, loss, _ = forward(model, state[0], state[1], tokens, labels, cfg.q_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state[:] = y.detach(), z.detach()

    first, train_s = _timed(train_step, steps, warmup, sync)
    model.eval()
    # inference: time `infer_k` supervision steps and scale to N_sup (every step costs the same)
    infer_k = infer_sup_steps or cfg.model.n_sup
    with torch.no_grad():
        if warmup > 1:  # a cheap config gets a warm-up pass; the paper one on a CPU does not
            model.trace(tokens, infer_k, keep_states=False)
        sync()
        t0 = time.perf_counter()
        model.trace(tokens, infer_k, keep_states=False)
        sync()
        infer_s = (time.perf_counter() - t0) * cfg.model.n_sup / infer_k
    return {"what": "teacher step", "profile": profile, "compiled": compile_, "params": count_params(model),
            "batch": cfg.batch, "T": cfg.model.T, "n": cfg.model.n, "n_sup": cfg.model.n_sup,
            "hidden": cfg.model.hidden, "ms_per_train_step": 1000 * train_s,
            "train_samples_x_steps_per_s": cfg.batch / train_s, "compile_s": first if compile_ else None,
            "infer_puzzles_per_s": cfg.batch / infer_s, "infer_timed_sup_steps": infer_k,
            "peak_mem_mb": _peak_mb(device), "device": str(device), "timed_steps": steps}


def bench_denoiser(profile: str, params_path: str, steps: int, warmup: int, device,
                   compile_: bool = False) -> dict:
    """The denoiser's training step at the profile's trajectory shape (K = N_sup rows of the
    teacher's y, its cells and width): one no-grad call (the self-conditioning / error-correcting
    estimate), the trained call with it, backward and AdamW, as `train_distill` runs them."""
    from ..device import maybe_compile
    from ..models.denoiser import Denoiser, cell_window_of, row_lag_of

    p = _profile_params(profile, params_path)
    cfg, tcfg = p.distill, p.teacher.model
    shape = _shape_of(profile, p)
    k, c = (1 if cfg.final_only else tcfg.n_sup), tcfg.hidden
    model = Denoiser(cfg.denoiser, k, shape.cells, c, shape.vocab, row_lag=row_lag_of(cfg),
                     cell_window=cell_window_of(cfg)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = maybe_compile(model, compile_)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(cfg.batch, k, shape.cells, c, generator=g).to(device)
    x0 = torch.randn(cfg.batch, k, shape.cells, c, generator=g).to(device)
    levels = (cfg.batch, 1, shape.cells) if cfg.row_noise == "cells" else (cfg.batch,)  # per cell or shared
    t = torch.randint(1, cfg.T + 1, levels, generator=g).to(device)
    puzzle = torch.randint(0, shape.vocab, (cfg.batch, shape.cells), generator=g).to(device)

    def train_step():
        with torch.no_grad():
            prev = net(x_t, t, puzzle)
        loss = (net(x_t, t, puzzle, prev) - x0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    first, train_s = _timed(train_step, steps, warmup, _syncer(device))
    return {"what": "denoiser step", "profile": profile, "compiled": compile_,
            "params": sum(q.numel() for q in model.parameters()), "batch": cfg.batch, "rows": k,
            "hidden": cfg.denoiser.hidden, "ms_per_train_step": 1000 * train_s,
            "train_samples_x_steps_per_s": cfg.batch / train_s, "compile_s": first if compile_ else None,
            "device": str(device), "timed_steps": steps}


def speedups(rows: list[dict]) -> list[dict]:
    """Compiled over eager throughput for every (what, profile) measured both ways."""
    eager = {(r["what"], r["profile"]): r for r in rows if not r.get("compiled")}
    out = []
    for r in rows:
        e = eager.get((r["what"], r["profile"]))
        if r.get("compiled") and e:
            out.append({"what": r["what"], "profile": r["profile"],
                        "speedup": r["train_samples_x_steps_per_s"] / e["train_samples_x_steps_per_s"],
                        "compile_s": r["compile_s"]})
    return out


def _solve_rows(rows):
    from ..data.board import format_board
    from ..data.solver import solve

    out = []
    for line, _, q, ans, rating in rows:
        t0 = time.perf_counter()
        res = solve(q)
        dt = time.perf_counter() - t0
        wrong = not res.unique or (ans is not None and format_board(res.solutions[0]) != ans)
        diff = rating not in (None, "") and int(float(rating)) != res.guesses
        out.append((dt, wrong, diff, line))
    return out


def bench_solver(path: str, limit: int | None, workers: int = 1) -> dict:
    """Solve every puzzle of a file; per-puzzle times are measured inside each worker process."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from ..data.loaders import _raw_rows

    rows = list(_raw_rows(Path(path)))[:limit]
    chunks = [rows[i:i + 500] for i in range(0, len(rows), 500)]
    results = []
    bar = tqdm(total=len(rows), desc="solve", mininterval=2)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(_solve_rows, chunks):
                results += r
                bar.update(len(r))
    else:
        for c in chunks:
            results += _solve_rows(c)
            bar.update(len(c))
    bar.close()
    ms = np.array([r[0] for r in results]) * 1000
    bad = [r[3] for r in results if r[1]]
    return {"file": path, "n": len(results), "wrong_or_not_unique": len(bad),
            "first_bad_lines": bad[:5], "rating_mismatch": sum(r[2] for r in results), "workers": workers,
            "median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()),
            "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max()), "total_cpu_s": float(ms.sum() / 1000)}


def bench_arc_teacher(teacher_path: str, data_dir: str, split: str, device) -> list[dict]:
    """One row per solver (teacher, baseline) on the same held-out ARC tasks, with the paired tests."""
    from ..checkpoint import load_teacher
    from ..tasks.arc.dataset import load_set
    from ..tasks.arc.evaluate import teacher_vs_baseline
    arc = load_set(data_dir)
    model, ck = load_teacher(teacher_path, device)
    if ck.get("data_meta", {}).get("task") != "arc":
        raise ValueError(f"{teacher_path} was not trained on ARC data (its data: {ck.get('data_meta', {}).get('task', 'sudoku')})")
    if model.cfg.puzzles != arc.puzzles:
        raise ValueError(f"{teacher_path} has {model.cfg.puzzles} puzzle embeddings, {data_dir} has {arc.puzzles} "
                         "puzzle ids: the teacher was trained on another ARC set")
    t0 = time.perf_counter()
    r = teacher_vs_baseline(model, arc, split, 64, device)
    rows = []
    for name in ("teacher", "baseline"):
        x = r[name]
        row = {"solver": name, "version": r["version"], "split": split, "canvas": r["canvas"], "tasks": x["tasks"],
               "test_inputs": x["test_inputs"], "pass@1": x["pass@1"], "pass@2": x["pass@2"],
               "pass@2_strict": x["pass@2_strict"], "inputs_solved@2": x["inputs_solved@2"],
               "inputs_ci95@2": "[{:.3f}, {:.3f}]".format(*x["inputs_ci95@2"])}
        if name == "teacher":
            pi, pt = r["paired_inputs_teacher_vs_baseline"], r["paired_tasks_strict_teacher_vs_baseline"]
            row.update(paired_inputs=f"{pi['only_first']} / {pi['only_second']}, p = {pi['p_value']:.3g}",
                       paired_tasks_strict=f"{pt['only_first']} / {pt['only_second']}, p = {pt['p_value']:.3g}",
                       teacher_steps=ck["step"], seconds=round(time.perf_counter() - t0, 1))
        rows.append(row)
    return rows


def bench_tdrm(checkpoints: list[str], data_dir: str, split: str, steps: int | None, limit: int | None,
               device, batch_size: int = 256, row_lag: float | None = None) -> list[dict]:
    """One row per checkpoint (see the module doc); the teacher's row first (from the first
    checkpoint's embedded teacher, which every checkpoint must share). `row_lag`: the checkpoints
    trained with independent per-row levels sample on the rolling schedule of this lag (the others
    as they were trained); at least one must be such a checkpoint."""
    from ..data.dataset import load_split
    from ..data.board import to_tokens
    from ..eval.compare import teacher_run
    from ..eval.metrics import mcnemar_exact, wilson
    from ..eval.tdrm import chain_diagnosis, inference_cost
    from ..checkpoint import load as load_checkpoint, load_tdrm
    from ..models.denoiser import set_sampling_lag

    if row_lag is not None and not 0.0 <= row_lag <= 1.0:
        raise ValueError(f"--row-lag must be in [0, 1], got {row_lag}")
    if row_lag is not None and not any(
            load_checkpoint(p).get("config", {}).get("distill", {}).get("row_noise") == "independent"
            for p in checkpoints):
        raise ValueError(f"--row-lag {row_lag}: no checkpoint was trained with distill.row_noise independent, "
                         "the only models that sample at any row lag")
    ps = load_split(data_dir, split)
    if limit:
        ps = ps.take(np.arange(min(limit, len(ps))))
    rows, first = [], None
    teacher_correct = teacher_boards = None
    for path in checkpoints:
        model, codec, schedule, ck = load_tdrm(path, device)
        d = ck["config"]["distill"]
        s = steps or d["sample_steps"]
        if row_lag is not None and d.get("row_noise") == "independent":
            set_sampling_lag(model, d["row_noise"], row_lag)
        if teacher_correct is None:
            k = model.K // codec.layout.rows_per_step
            t_res, _ = teacher_run(codec.teacher, ps, batch_size, device, k)
            teacher_correct, teacher_boards = t_res["correct"], t_res["step_boards"]
            tokens = torch.as_tensor(to_tokens(ps.puzzles[:8]), device=device)
            cost = inference_cost(codec, model, tokens, s)
            rows.append({"model": "teacher", "n": t_res["n"], "exact": t_res["exact_accuracy"],
                         "ci95": "[{:.3f}, {:.3f}]".format(*t_res["ci95"]),
                         "by_row": " ".join(f"{v:.3f}" for v in t_res["per_step_exact_accuracy"]),
                         "gflops": cost["teacher_flops"] / 1e9})
        t0 = time.perf_counter()  # one chain per puzzle: the one-sample result, its diagnosis and the corrector
        diag = chain_diagnosis(model, codec, schedule, ps, steps=s, seed=ck["config"]["common"]["seed"],
                               batch_size=batch_size, device=device, corrector_steps=3,
                               teacher_boards=teacher_boards)
        secs = time.perf_counter() - t0
        correct = diag["correct"]
        lo, hi = wilson(int(correct.sum()), len(correct))
        tokens = torch.as_tensor(to_tokens(ps.puzzles[:8]), device=device)
        cost = inference_cost(codec, model, tokens, diag["calls"])
        vs_t = mcnemar_exact(list(correct), list(teacher_correct))
        arms = {k: d.get(k) for k in ("state", "row_noise", "row_lag", "cell_window", "ce_rows", "self_correct_prob",
                                        "chain_prob")}
        arms["recur"] = d["denoiser"].get("recur", 1)
        arms["latent_cond"] = d["denoiser"].get("latent_cond", False)
        arms["row_causal"] = d["denoiser"].get("row_causal", False)
        arms["ce_error_weight"] = d.get("ce_error_weight", 1.0)
        arms["sample_lag"] = getattr(model, "row_lag", None)
        row = {"model": path, "arms": " ".join(f"{k}={v}" for k, v in arms.items()), "n": len(correct),
               "exact": float(correct.mean()), "ci95": f"[{lo:.3f}, {hi:.3f}]",
               "calls": diag["calls"], "vs_teacher": f"{vs_t['only_first']}/{vs_t['only_second']} p={vs_t['p_value']:.2g}",
               "by_row": " ".join(f"{v:.3f}" for v in diag["exact_by_row"]),
               "agree_by_row": " ".join(f"{v:.3f}" for v in diag["agreement_by_row"]),
               "by_call": " ".join(f"{v:.2f}" for v in diag["exact_by_call"]),
               "cells": diag["cell_by_call"][-1],
               "changed_after_early": float(np.sum(diag["blank_changed_by_call"][diag["early_call"]:])),
               "early_fixed": diag["wrong_after_early_fixed_at_end"],
               "gflops": cost["tdrm_flops"] / 1e9, "seconds": secs,
               "teacher_corrector": " ".join(f"{v:.3f}" for v in diag["corrector_exact"])}
        if first is None:
            first = correct
        else:
            v = mcnemar_exact(list(correct), list(first))
            row["vs_first"] = f"{v['only_first']}/{v['only_second']} p={v['p_value']:.2g}"
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _print(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [keys] + [[fmt(r.get(k, "")) for k in keys] for r in rows]
    w = [max(len(row[i]) for row in table) for i in range(len(keys))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w[j]) for j, c in enumerate(row)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (x + 2) for x in w) + "|")


def run(what: str, **kw) -> int:
    """Run one benchmark, print its table, optionally write JSON; exit status 1 if the solver erred."""
    from ..device import resolve_device
    print(f"machine: {_machine()}; commit {_commit()}", flush=True)
    if what == "trm":
        device = resolve_device(kw["device"])
        rows = []
        modes = [False, True] if kw.get("compile") else [False]
        for prof in kw["profiles"].split(","):
            paper = prof == "paper"
            steps = kw["paper_steps"] if paper else kw["steps"]
            batch = kw.get("paper_batch") if paper else None
            for comp in modes:  # eager then compiled, each from a fresh model
                rows.append(bench_trm(prof, kw["params"], steps, 1 if paper else 3, device, batch,
                                      infer_sup_steps=1 if paper else None, compile_=comp))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if kw.get("denoiser") and not paper:
                for comp in modes:
                    rows.append(bench_denoiser(prof, kw["params"], steps, 3, device, compile_=comp))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    elif what == "kernels":
        from kernels.bench import setup

        from .kernels import model_rows
        bench = setup(kw["device"], kw["dtype"], kw["small"], kw["reps"], not kw["no_compile"], kw.get("out"))
        if bench is not None:
            model_rows(bench, kw["small"])
            bench.save()
        return 0
    elif what == "scaling":
        from .scaling import bench_scaling
        rows = bench_scaling(kw["params"], kw["profile"], [int(n) for n in kw["procs"].split(",")], kw["steps"],
                             kw["data"], kw["traces"], kw["teacher"], tuple(kw["stages"].split(",")), kw["tdrm"])
    elif what == "arc" and kw.get("teacher"):
        rows = bench_arc_teacher(kw["teacher"], kw["data"], kw["split"], resolve_device(kw["device"]))
    elif what == "arc":
        from ..eval.metrics import wilson
        from ..tasks.arc.baseline import evaluate
        rows = []
        for spec in kw["sets"].split(","):
            version, split = spec.split(":")
            t0 = time.perf_counter()
            r = evaluate(version, split)
            lo, hi = wilson(r["inputs_solved@2"], r["test_inputs"])
            rows.append({**r, "inputs_ci95@2": f"[{lo:.3f}, {hi:.3f}]", "seconds": round(time.perf_counter() - t0, 1)})
    elif what == "tdrm":
        rows = bench_tdrm(kw["checkpoint"], kw["data"], kw["split"], kw["steps"], kw["limit"],
                          resolve_device(kw["device"]), kw["batch_size"], kw.get("row_lag"))
    else:
        rows = [bench_solver(kw["file"], kw["limit"], kw.get("workers", 1))]
    _print(rows)
    if what == "trm" and speedups(rows):
        print("\ncompiled vs eager (training samples x steps per second):")
        _print(speedups(rows))
    if kw.get("out"):
        Path(kw["out"]).write_text(json.dumps({"machine": _machine(), "commit": _commit(), "rows": rows}, indent=2))
    return 0 if what != "solver" or rows[0]["wrong_or_not_unique"] == 0 else 1
