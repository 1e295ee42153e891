"""The `tdrm` command: eval, solve, rate, runs (list/show/compare/sync), plot, report."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def cmd_eval(a) -> int:
    from .data.loaders import load_puzzles
    from .device import resolve_device
    from .eval.teacher import evaluate
    from .checkpoint import check_size, load_teacher

    from .checkpoint import load as load_checkpoint

    for opt in ("limit", "batch_size", "steps", "samples"):
        v = getattr(a, opt)
        if v is not None and v < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    device = resolve_device(a.device)
    kind = load_checkpoint(a.checkpoint).get("kind")
    if kind != "tdrm":
        given = [f"--{o}" for o in ("sampler", "eta", "samples", "seed", "spacing") if getattr(a, o) is not None]
        if given:
            raise ValueError(f"{' '.join(given)} apply to TDRM checkpoints; {a.checkpoint} holds a "
                             f"{kind or 'teacher'} model")
    elif a.sampler == "ddpm" and a.eta is not None:
        raise ValueError("--eta applies to the ddim sampler; ddpm always samples at eta 1")
    elif a.eta is not None and a.eta < 0:
        raise ValueError(f"--eta must be >= 0, got {a.eta}")
    elif a.spacing is not None and a.spacing <= 0:
        raise ValueError(f"--spacing must be > 0, got {a.spacing}")
    ps = load_puzzles(a.puzzles, limit=a.limit, skip_bad=a.skip_bad)
    if ps.skipped:
        print(f"skipped {ps.skipped} bad rows", file=sys.stderr)
    if kind == "tdrm":
        res = _eval_tdrm(a, ps, device)
    else:
        model, ck = load_teacher(a.checkpoint, device, ema=not a.raw)
        check_size(ck, ps.shape.cells, str(a.puzzles))
        res = evaluate(model, ps, a.batch_size, device, steps=a.steps, progress=True)
    res.pop("correct", None)
    res.pop("boards", None)
    res.update(checkpoint=str(a.checkpoint), puzzles=str(a.puzzles), weights="raw" if a.raw else "ema")
    lo, hi = res["ci95"]
    rows = [("puzzles", f"{a.puzzles} (n={res['n']})"),
            ("exact accuracy", f"{res['exact_accuracy']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]"),
            ("seconds", f"{res['seconds']:.2f} ({res['puzzles_per_second']:.1f} puzzles/s)")]
    if "per_step_exact_accuracy" in res:
        rows.insert(2, ("cell accuracy", f"{res['cell_accuracy']:.4f}"))
        rows.insert(3, ("per step exact", " ".join(f"{v:.3f}" for v in res["per_step_exact_accuracy"])))
        rows += [(f"rating {k}", f"{v['exact_accuracy']:.4f} (n={v['n']})") for k, v in res["by_rating"].items()]
    else:
        lag = "" if res.get("row_lag") is None else f" row_lag={res['row_lag']}"
        rows.insert(2, ("sampler", f"{res['sampler']} steps={res['steps']} eta={res['eta']} "
                                   f"spacing={res['spacing']}{lag} samples={res['samples']}"))
        rows.insert(3, ("valid fraction", f"{res['valid_fraction']:.4f}"))
    print(_table(rows))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _eval_tdrm(a, ps, device) -> dict:
    from .eval.tdrm import evaluate_tdrm
    from .checkpoint import load_tdrm

    model, codec, schedule, ck = load_tdrm(a.checkpoint, device, ema=not a.raw)
    if ck["teacher"]["cells"] != ps.shape.cells:
        raise ValueError(f"size mismatch: the checkpoint models {ck['teacher']['cells']}-cell boards "
                         f"but {a.puzzles} has {ps.shape.cells}-cell puzzles")
    d = ck["config"]["distill"]
    if a.spacing is not None:
        if d.get("row_noise", "shared") != "shared":
            raise ValueError(f"--spacing spaces the shared-level sampler's calls; {a.checkpoint} was trained with "
                             f"row_noise {d['row_noise']!r}, which samples on its own schedule")
        schedule = dataclasses.replace(schedule, spacing=a.spacing)
    sampler = a.sampler or d["sampler"]
    eta = 1.0 if sampler == "ddpm" else (d["eta"] if a.eta is None else a.eta)  # what runs is what is recorded
    res = evaluate_tdrm(model, codec, schedule, ps, sampler=sampler,
                        steps=d["sample_steps"] if a.steps is None else a.steps, eta=eta,
                        samples=d["samples"] if a.samples is None else a.samples,
                        seed=ck["config"]["common"]["seed"] if a.seed is None else a.seed,
                        batch_size=a.batch_size, device=device, progress=True)
    res["row_lag"] = getattr(model, "row_lag", None)  # per-row models: the rolling schedule's lag they sampled at
    return res


def cmd_solve(a) -> int:
    import torch

    from .data.board import from_tokens, parse, pretty, shape_for_length, to_tokens
    from .data.solver import solve

    puzzle = parse(a.puzzle)
    shape = shape_for_length(puzzle.size)
    if not a.checkpoint:
        res = solve(puzzle, shape)
        if res.count == 0:
            print("no solution", file=sys.stderr)
            return 1
        print(pretty(res.solutions[0], shape))
        print(f"rating (guesses): {res.guesses}; unique: {res.unique}")
        return 0
    from .device import resolve_device
    from .checkpoint import check_size, load_teacher

    device = resolve_device(a.device)
    model, ck = load_teacher(a.checkpoint, device)
    check_size(ck, shape.cells, "the puzzle")
    tr = model.trace(torch.as_tensor(to_tokens(puzzle[None]), device=device), keep_states=False)
    boards = from_tokens(tr.logits.argmax(-1)[:, 0].cpu().numpy())  # (K, C)
    from .data.board import is_solution
    for k, b in enumerate(boards, start=1):
        print(f"step {k}: {'solved' if is_solution(puzzle, b, shape) else 'not solved'}")
        print(pretty(b, shape) + "\n")
    return 0 if is_solution(puzzle, boards[-1], shape) else 1


def cmd_rate(a) -> int:
    from .data.loaders import load_puzzles, write_csv

    ps = load_puzzles(a.puzzles, skip_bad=a.skip_bad, check_unique=True, limit=a.limit)
    write_csv(a.out, ps)
    print(f"rated {len(ps)} puzzles -> {a.out}; median rating {int(np.median(ps.ratings))}"
          + (f"; skipped {ps.skipped} bad rows" if ps.skipped else ""))
    return 0


# -- runs ----------------------------------------------------------------------------------------
def _store(a):
    from .tracking.store import open_store
    return open_store(a.dir, a.mongo, a.mongo_db)


def _headline(metrics: dict, n: int = 2) -> list[str]:
    keys = [k for k in metrics if "exact" in k and "ci" not in k and isinstance(metrics[k], (int, float))]
    return (sorted(keys, key=lambda k: (not k.startswith("test"), len(k))) or list(metrics))[:n]


def _v(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _grid(header: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in header]] + [[_v(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def cmd_runs_list(a) -> int:
    from .tracking.store import list_runs, varying_keys

    recs = list_runs(_store(a), a.stage, a.status)
    if a.format == "json":
        print(json.dumps(recs, indent=1, default=str))
        return 0
    if not recs:
        print("no runs" + (f" with stage={a.stage}" if a.stage else "") + (f" status={a.status}" if a.status else ""))
        return 0
    keys = [k for k in varying_keys(recs) if k not in ("seed",)][:3] if len({r["stage"] for r in recs}) == 1 else []
    rows = []
    for r in recs:
        params = " ".join(f"{k.split('.')[-1]}={_v(r['params'].get(k))}" for k in keys)
        mets = " ".join(f"{k}={_v(r['metrics'][k])}" for k in _headline(r["metrics"]))
        dur = f"{r['duration_s'] / 60:.1f}m" if r["duration_s"] is not None else "-"
        rows.append([r["id"], r["stage"], r["status"], r["start"], dur, r["host"], (r["git_commit"] or "-")[:8],
                     r["dvc_exp"], params, mets])
    print(_grid(["id", "stage", "status", "start", "took", "host", "commit", "dvc exp", "params", "final metrics"], rows))
    return 0


def cmd_runs_show(a) -> int:
    run = _store(a).load(a.run)
    r = run.record
    if a.format == "json":
        print(json.dumps({**r, "series": {k: {"steps": s, "values": v} for k, (s, v) in run.series.items()}},
                         indent=1, default=str))
        return 0
    print(_table([(k, _v(r[k])) for k in ("id", "source", "stage", "status", "start", "stop", "duration_s", "host",
                                         "git_commit", "dvc_exp", "dvc_baseline", "run_uid")]))
    print("\nconfig")
    print(_table([(k, _v(v)) for k, v in r["params"].items()]) if r["params"] else "  (none)")
    print("\nfinal metrics")
    print(_table([(k, _v(v)) for k, v in r["metrics"].items()]) if r["metrics"] else "  (none)")
    if run.series:
        print("\nmetric series")
        print(_table([(k, f"{len(v)} points, steps {s[0]}..{s[-1]}") for k, (s, v) in run.series.items() if v]))
    return 0


def cmd_runs_compare(a) -> int:
    from .eval.plots import curves_png
    from .tracking.store import varying_keys

    store = _store(a)
    runs = [store.load(i) for i in a.runs]
    recs = [r.record for r in runs]
    labels = [f"{r['id']} {r['stage']}" + (f" ({r['dvc_exp']})" if r["dvc_exp"] else "") for r in recs]
    diff = varying_keys(recs)
    mkeys = sorted({k for r in recs for k in r["metrics"]})
    if a.metric:
        mkeys = [k for k in mkeys if k == a.metric or k.startswith(a.metric + ".") or a.metric in k]
    if a.format == "json":
        print(json.dumps({"runs": recs, "config_differences": {k: [r["params"].get(k) for r in recs] for k in diff},
                          "metrics": {k: [r["metrics"].get(k) for r in recs] for k in mkeys}}, indent=1, default=str))
    else:
        print(_grid(["", *labels], [["status", *(r["status"] for r in recs)],
                                    ["commit", *((r["git_commit"] or "-")[:8] for r in recs)]]))
        same = len({k for r in recs for k in r["params"]}) - len(diff)
        print(f"\nconfig differences ({len(diff)}; {same} keys identical)")
        print(_grid(["key", *labels], [[k, *(r["params"].get(k) for r in recs)] for k in diff]) if diff else "  none")
        print("\nfinal metrics")
        print(_grid(["metric", *labels], [[k, *(r["metrics"].get(k) for r in recs)] for k in mkeys]) if mkeys
              else "  none")
    if a.png:
        shared = sorted(set.intersection(*(set(r.series) for r in runs)))
        rank = lambda n: next((i for i, w in enumerate(("exact", "solve", "reward", "loss", "mse")) if w in n), 9)  # noqa: E731
        names = [a.metric] if a.metric else sorted(shared, key=lambda n: (rank(n), n))[:6]
        names = [n for n in names if any(n in r.series for r in runs)]
        if not names:
            raise ValueError(f"no metric series {a.metric!r} in these runs" if a.metric else
                             "these runs share no metric series; name one with --metric")
        w, h = curves_png({lab: r.series for lab, r in zip(labels, runs)}, names, a.png)
        print(f"\ncurves of {', '.join(names)} -> {a.png} ({w}x{h})", file=sys.stderr)
    return 0


def cmd_runs_sync(a) -> int:
    from .tracking.sacred_run import runs_dir
    from .tracking.store import FileRuns, MongoRuns

    url = a.mongo or os.environ.get("TDRM_MONGO_URL")
    if not url:
        raise ValueError("runs sync needs a MongoDB: --mongo URL or TDRM_MONGO_URL")
    from .tracking.store import sync_to_mongo
    files = FileRuns(a.dir or runs_dir())
    res = sync_to_mongo(files, MongoRuns(url, a.mongo_db or os.environ.get("TDRM_MONGO_DB", "tdrm")),
                        progress=lambda rid, mid: print(f"run {rid} -> MongoDB run {mid}", file=sys.stderr))
    print(f"copied {len(res['copied'])} runs, {len(res['skipped'])} already in MongoDB")
    return 0


# -- pictures and report ---------------------------------------------------------------------------
def cmd_plot_trajectory(a) -> int:
    from .data.board import parse
    from .device import resolve_device
    from .pipeline.report import trajectory_picture

    path = trajectory_picture(a.checkpoint, parse(a.puzzle), a.png, over=a.over, steps=a.steps, seed=a.seed,
                              device=resolve_device(a.device))
    wrong = path.errors()[-1].sum()
    print(f"{len(path.boards)} boards -> {a.png}; last: "
          + ("no solution to compare with" if path.solution is None else f"{int(wrong)} wrong cells"))
    return 0


def cmd_plot_curves(a) -> int:
    from .eval.plots import curves_png
    from .eval.report import read_csv_series

    series, order = {}, []
    for path in a.csv:
        _, cols = read_csv_series(path)
        if not cols:
            raise ValueError(f"{path}: no numeric columns")
        series[Path(path).stem] = cols
        order += [c for c in cols if c not in order]
    names = a.metric or [c for c in order if "ci_" not in c][:6]
    missing = [m for m in names if not any(m in cols for cols in series.values())]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in {', '.join(a.csv)}; columns: {', '.join(order)}")
    w, h = curves_png(series, names, a.png)
    print(f"{', '.join(names)} -> {a.png} ({w}x{h})")
    return 0


def cmd_report(a) -> int:
    from .device import resolve_device
    from .pipeline.report import report

    out = report(a.out, metrics_dir=a.metrics, plots_dir=a.plots, data_dir=a.data, teacher_path=a.teacher,
                 tdrm_path=a.tdrm, puzzle_index=a.puzzle_index, device=resolve_device(a.device))
    print(f"report -> {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdrm", description="Tiny Diffusion Recursive Models")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="evaluate a checkpoint on a puzzle file")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--puzzles", required=True, help="Sudoku-Extreme CSV or puzzle list")
    e.add_argument("--out", help="write metrics JSON here")
    e.add_argument("--limit", type=int)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--steps", type=int, help="teacher: supervision steps (default N_sup); "
                   "TDRM: sampling steps (default from the checkpoint)")
    e.add_argument("--sampler", choices=["ddim", "ddpm"], help="TDRM sampler (default from the checkpoint)")
    e.add_argument("--eta", type=float, help="TDRM DDIM eta (default from the checkpoint)")
    e.add_argument("--spacing", type=float, help="TDRM time spacing power of the sampler's calls, 1 = even "
                   "(default from the checkpoint)")
    e.add_argument("--samples", type=int, help="TDRM samples per puzzle, first valid one kept")
    e.add_argument("--seed", type=int, help="TDRM sampling seed (default: the run's seed)")
    e.add_argument("--raw", action="store_true", help="use raw weights instead of EMA")
    e.add_argument("--skip-bad", action="store_true", help="skip bad rows instead of failing")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_eval)
    s = sub.add_parser("solve", help="solve one puzzle (exact solver, or a model checkpoint)")
    s.add_argument("puzzle", help="row-major string, . or 0 for blanks")
    s.add_argument("--checkpoint")
    s.add_argument("--device", default="auto")
    s.set_defaults(fn=cmd_solve)
    r = sub.add_parser("rate", help="solve and rate a puzzle file, write Sudoku-Extreme CSV")
    r.add_argument("--puzzles", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--limit", type=int)
    r.add_argument("--skip-bad", action="store_true")
    r.set_defaults(fn=cmd_rate)

    runs = sub.add_parser("runs", help="Sacred runs: list, show, compare, sync to MongoDB")
    rsub = runs.add_subparsers(dest="action", required=True)

    def store_args(x):
        x.add_argument("--dir", help="FileStorage directory (default: TDRM_RUNS_DIR or runs/)")
        x.add_argument("--mongo", help="MongoDB URL (default: TDRM_MONGO_URL; FileStorage when unset)")
        x.add_argument("--mongo-db", help="database (default: TDRM_MONGO_DB or tdrm)")
        x.add_argument("--format", choices=["table", "json"], default="table")
    rl_ = rsub.add_parser("list", help="one line per run")
    store_args(rl_)
    rl_.add_argument("--stage")
    rl_.add_argument("--status", help="COMPLETED, FAILED, INTERRUPTED, RUNNING, DIED (running, heartbeat stale)")
    rl_.set_defaults(fn=cmd_runs_list)
    rs = rsub.add_parser("show", help="one run: config, final metrics, series")
    store_args(rs)
    rs.add_argument("run")
    rs.set_defaults(fn=cmd_runs_show)
    rc = rsub.add_parser("compare", help="config differences, final metrics and curves of runs")
    store_args(rc)
    rc.add_argument("runs", nargs="+")
    rc.add_argument("--metric", help="only this metric (and its curve)")
    rc.add_argument("--png", help="write the metric curves overlaid here")
    rc.set_defaults(fn=cmd_runs_compare)
    ry = rsub.add_parser("sync", help="copy FileStorage runs into MongoDB (skips runs already there)")
    store_args(ry)
    ry.set_defaults(fn=cmd_runs_sync)

    pl = sub.add_parser("plot", help="pictures")
    psub = pl.add_subparsers(dest="what", required=True)
    pt = psub.add_parser("trajectory", help="a puzzle along a teacher's or TDRM's trajectory, as PNG")
    pt.add_argument("--checkpoint", required=True)
    pt.add_argument("--puzzle", required=True, help="row-major string, . or 0 for blanks")
    pt.add_argument("--png", required=True)
    pt.add_argument("--over", choices=["steps", "sampling"], default="steps",
                    help="TDRM: per supervision step of the generated trajectory, or per sampling step")
    pt.add_argument("--steps", type=int, help="TDRM sampling steps (default from the checkpoint)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--device", default="auto")
    pt.set_defaults(fn=cmd_plot_trajectory)
    pc = psub.add_parser("curves", help="training curves or accuracy-by-step from DVC plot CSVs, as PNG")
    pc.add_argument("csv", nargs="+", help="e.g. plots/teacher_train.csv plots/distill_train.csv")
    pc.add_argument("--metric", action="append", help="a column to draw (repeatable; default: the first six)")
    pc.add_argument("--png", required=True)
    pc.set_defaults(fn=cmd_plot_curves)

    rp = sub.add_parser("report", help="one self-contained HTML page of every stage's results")
    rp.add_argument("--out", default="docs/report.html")
    rp.add_argument("--metrics", default="metrics")
    rp.add_argument("--plots", default="plots")
    rp.add_argument("--data", default="data/task", help="for the trajectory pictures (test split)")
    rp.add_argument("--teacher", default="models/teacher.pt")
    rp.add_argument("--tdrm", default="models/tdrm.pt")
    rp.add_argument("--puzzle-index", type=int, default=0)
    rp.add_argument("--device", default="auto")
    rp.set_defaults(fn=cmd_report)
    return p


def bench_main(argv: list[str] | None = None) -> int:
    """`python -m tdrm.bench trm|solver ...` (argument parsing lives here, the work in tdrm.bench)."""
    from . import bench

    ap = argparse.ArgumentParser(prog="python -m tdrm.bench", description=bench.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("trm", help="TRM training/inference throughput")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--profiles", default="default,paper")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--paper-steps", type=int, default=3, help="timed steps for the paper config")
    t.add_argument("--paper-batch", type=int, help="batch for the paper config (default: its 768)")
    t.add_argument("--device", default="auto")
    t.add_argument("--compile", action="store_true", help="also time the torch.compile'd step (common.compile)")
    t.add_argument("--denoiser", action="store_true", help="also time the denoiser's training step")
    t.add_argument("--out")
    d = sub.add_parser("tdrm", help="TDRM checkpoints against their teacher (accuracy, paired tests, chain)")
    d.add_argument("--checkpoint", action="append", required=True, help="repeatable; the first is the paired reference")
    d.add_argument("--data", default="data/task")
    d.add_argument("--split", default="test")
    d.add_argument("--steps", type=int, help="denoiser calls (default: each checkpoint's sample_steps)")
    d.add_argument("--row-lag", type=float, help="checkpoints trained with row_noise independent sample on the "
                                                 "rolling schedule of this lag (0 shared level .. 1 row by row)")
    d.add_argument("--limit", type=int)
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--device", default="auto")
    d.add_argument("--out")
    k = sub.add_parser("kernels", help="whole-model rows of the kernel benchmark (GPU; the per-op rows are kernels.bench)")
    k.add_argument("--device", default="cuda", help="cuda (default) or cpu with --small")
    k.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    k.add_argument("--small", action="store_true", help="tiny shapes (a smoke run; times mean nothing)")
    k.add_argument("--no-compile", action="store_true", help="skip the torch.compile paths")
    k.add_argument("--reps", type=int, default=20)
    k.add_argument("--out")
    c = sub.add_parser("scaling", help="teacher, distill and rl training throughput under torchrun at 1, 2, ... processes")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--profile", default="default")
    c.add_argument("--procs", default="1,2", help="comma-separated process counts (GPUs per node on CUDA)")
    c.add_argument("--steps", type=int, default=30, help="training steps per run (first steps and compilation included)")
    c.add_argument("--data", default="data/task")
    c.add_argument("--traces", default="traces")
    c.add_argument("--teacher", default="models/teacher.pt")
    c.add_argument("--tdrm", default="models/tdrm.pt", help="the distilled model the rl stage starts from")
    c.add_argument("--stages", default="teacher,distill", help="comma-separated: teacher, distill, rl")
    c.add_argument("--out")
    r = sub.add_parser("arc", help="the trivial ARC baseline on ARC data versions (pass@1, pass@2, strict); "
                                   "with --teacher, an ARC teacher against it on the same tasks")
    r.add_argument("--sets", default="arcagi2_f3283f7:eval,arcagi2_f3283f7:train,arcagi1_aa922be:eval",
                   help="comma-separated VERSION:SPLIT")
    r.add_argument("--teacher", help="an ARC teacher checkpoint: score it and the baseline on --data's held-out tasks")
    r.add_argument("--data", default="data/task", help="with --teacher: the data stage's ARC set")
    r.add_argument("--split", default="test", choices=["dev", "test"], help="with --teacher: held-out tasks to score")
    r.add_argument("--device", default="auto")
    r.add_argument("--out")
    s = sub.add_parser("solver", help="exact solver over a whole puzzle file")
    s.add_argument("--file", default="../shared/data/sudoku/forum_hardest_11plus.csv")
    s.add_argument("--limit", type=int)
    s.add_argument("--workers", type=int, default=1, help="processes (per-puzzle times are per process)")
    s.add_argument("--out")
    a = vars(ap.parse_args(argv))
    if a["what"] == "kernels" and a["device"] == "cpu" and not a["small"]:
        ap.error("--device cpu needs --small (the Triton path runs in the interpreter there)")
    return bench.run(a.pop("what"), **a)


def main(argv: list[str] | None = None) -> int:
    from .data.board import PuzzleError
    from .tracking.store import RunNotFound
    from .checkpoint import CheckpointError

    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (PuzzleError, CheckpointError, FileNotFoundError, ValueError, ConnectionError, RunNotFound) as e:
        print(f"tdrm {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
