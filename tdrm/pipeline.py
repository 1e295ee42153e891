"""The DVC stages as library calls: each reads its params, runs inside a tracked run, writes metrics.

Stage scripts in `stages/` only pass paths in. Tracking is Sacred (tdrm/tracking/sacred_run.py)
unless `tracker_factory` is replaced (tests use the null tracker).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict

import numpy as np
from pathlib import Path

from . import config
from .data.dataset import build, load_split
from .device import resolve_device, set_threads
from .eval.teacher import evaluate
from .checkpoint import check_size, load_teacher, load as load_checkpoint


def _tracked(stage: str, cfg: dict, seed: int, fn):
    from .tracking.sacred_run import tracked_run
    return tracked_run(stage, cfg, fn, seed)


def _write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_csv(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def _finish(tracker, metrics_path: str, metrics: dict) -> dict:
    """Write the stage's DVC metrics file and attach it to the Sacred run."""
    _write_json(metrics_path, metrics)
    tracker.add_artifact(metrics_path)
    return metrics


def data_stage(params_path: str, out_dir: str, metrics_path: str) -> dict:
    p = config.load(params_path)

    def run(tracker):
        meta = build(p.data, out_dir)
        metrics = {"profile": p.profile, "board": meta["board"], "classes": meta["classes"],
                   **{f"{s}_puzzles": c["puzzles"] for s, c in meta["counts"].items()},
                   "mean_givens_test": meta["mean_givens"]["test"], "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    return _tracked("data", {"profile": p.profile, "data": asdict(p.data)}, p.common.seed, run)


def teacher_stage(params_path: str, data_dir: str, model_out: str, metrics_path: str, plot_path: str,
                  resume_dir: str = "checkpoints") -> dict:
    from .train.teacher import train_teacher

    p = config.load(params_path)
    set_threads(p.common.threads)

    def run(tracker):
        res = train_teacher(p, data_dir, model_out, resume_path=Path(resume_dir) / "teacher-resume.pt",
                            tracker=tracker)
        history = res.pop("history")
        _write_csv(plot_path, history)
        metrics = {"profile": p.profile, **res, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "teacher": asdict(p.teacher)}
    return _tracked("teacher", cfg, p.common.seed, run)


def evaluate_stage(params_path: str, data_dir: str, model_path: str, metrics_path: str,
                   plot_path: str, tdrm_path: str | None = None, control_path: str | None = None,
                   tdrm_metrics_path: str | None = None, plots_dir: str = "plots",
                   report_path: str | None = None) -> dict:
    """The teacher on the test split; with `tdrm_path`, also TDRM against it on the same puzzles
    (metrics/tdrm.json, accuracy-against-steps and per-step CSV + PNG in `plots_dir`); with
    `report_path`, the offline HTML report of every stage's metrics (`report`)."""
    p = config.load(params_path)
    set_threads(p.common.threads)
    device = resolve_device(p.common.device)

    def run(tracker):
        model, ck = load_teacher(model_path, device)
        test = load_split(data_dir, "test")
        check_size(ck, test.shape.cells, f"{data_dir}/test.npz")
        if p.evaluate.limit:
            test = test.take(list(range(min(p.evaluate.limit, len(test)))))
        res = evaluate(model, test, p.evaluate.batch_size, device, progress=True)
        for k, acc in enumerate(res["per_step_exact_accuracy"], start=1):
            tracker.log_scalar("test.exact_accuracy_by_step", acc, k)
        _write_csv(plot_path, [{"step": k, "exact_accuracy": a, "cell_accuracy": c} for k, (a, c) in
                               enumerate(zip(res["per_step_exact_accuracy"], res["per_step_cell_accuracy"]), 1)])
        metrics = {"profile": p.profile, "weights": "ema", "split": "test", **res,
                   "train_steps": ck["step"], "train_minutes": ck["elapsed"] / 60,
                   "sacred_run_id": tracker.run_id}
        _finish(tracker, metrics_path, metrics)
        if tdrm_path:
            _compare_tdrm(p, model, test, tdrm_path, control_path, tdrm_metrics_path, plots_dir, tracker, device)
        if report_path:
            report(report_path, metrics_dir=Path(metrics_path).parent, plots_dir=plots_dir, data_dir=data_dir,
                   teacher_path=model_path, tdrm_path=tdrm_path, device=device)
        return metrics

    cfg = {"profile": p.profile, "common": asdict(p.common), "evaluate": asdict(p.evaluate)}
    return _tracked("evaluate", cfg, p.common.seed, run)


def _compare_tdrm(p, teacher, test, tdrm_path, control_path, metrics_path, plots_dir, tracker, device) -> dict:
    from .eval.compare import compare
    from .eval.plots import accuracy_by_steps_png, per_step_png

    metrics, steps_rows, per_step_rows = compare(teacher, tdrm_path, test, p.evaluate, p.common.seed, device,
                                                 control_path=control_path)
    plots = Path(plots_dir)
    _write_csv(plots / "tdrm_steps.csv", steps_rows)
    _write_csv(plots / "tdrm_per_step.csv", per_step_rows)
    title = f"{p.profile} profile, test n={metrics['n']}"
    accuracy_by_steps_png(steps_rows, plots / "tdrm_steps.png", title)
    per_step_png(per_step_rows, plots / "tdrm_per_step.png", title)
    for r in steps_rows:
        tracker.log_scalar("test.tdrm_exact_by_sampling_steps", r["exact_accuracy"], r["sampling_steps"])
    metrics = {"profile": p.profile, "split": "test", **metrics, "sacred_run_id": tracker.run_id}
    return _finish(tracker, metrics_path, metrics)


def distill_stage(params_path: str, traces_dir: str, teacher_path: str, model_out: str, metrics_path: str,
                  plot_path: str, final_only: bool = False, resume_dir: str = "checkpoints") -> dict:
    """Train the trajectory denoiser on the traces; `final_only` trains the K = 1 control."""
    import dataclasses

    from .train.distill import train_distill

    p = config.load(params_path)
    if final_only:
        p = dataclasses.replace(p, distill=dataclasses.replace(p.distill, final_only=True))
    set_threads(p.common.threads)
    device = resolve_device(p.common.device)
    name = "distill_control" if final_only else "distill"

    def run(tracker):
        teacher, _ = load_teacher(teacher_path, device)
        res = train_distill(p, traces_dir, teacher, model_out, resume_path=Path(resume_dir) / f"{name}-resume.pt",
                            tracker=tracker)
        _write_csv(plot_path, res.pop("history"))
        metrics = {"profile": p.profile, **res, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "distill": asdict(p.distill)}
    return _tracked(name, cfg, p.common.seed, run)


def traces_stage(params_path: str, data_dir: str, model_path: str, out_dir: str, metrics_path: str) -> dict:
    from .traces.record import record

    p = config.load(params_path)
    set_threads(p.common.threads)
    device = resolve_device(p.common.device)

    def run(tracker):
        model, ck = load_teacher(model_path, device)
        res = record(model, model_path, data_dir, out_dir, p.traces, p.common.seed, device)
        metrics = {"profile": p.profile, **{k: v for k, v in res.items() if k != "splits"},
                   **{f"{s}_puzzles": v["puzzles"] for s, v in res["splits"].items()},
                   "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "traces": asdict(p.traces)}
    return _tracked("traces", cfg, p.common.seed, run)


def rl_stage(params_path: str, data_dir: str, tdrm_path: str, model_out: str, metrics_path: str,
             plots_dir: str = "plots", resume_dir: str = "checkpoints") -> dict:
    """GRPO on the distilled TDRM (`rl` params), then the test split before and after RL:
    metrics/rl.json, plots/rl_train.csv (reward curve), plots/rl_steps.{csv,png}."""
    from .eval.plots import rl_png
    from .rl.train import before_after, train_rl

    p = config.load(params_path)
    set_threads(p.common.threads)
    device = resolve_device(p.common.device)

    def run(tracker):
        res = train_rl(p, tdrm_path, data_dir, model_out, resume_path=Path(resume_dir) / "rl-resume.pt",
                       tracker=tracker)
        history = res.pop("history")
        ev, rows = before_after(p, tdrm_path, model_out, data_dir, device)
        plots = Path(plots_dir)
        _write_csv(plots / "rl_train.csv", history)
        _write_csv(plots / "rl_steps.csv", rows)
        rl_png(rows, history, plots / "rl.png", f"{p.profile} profile, rl.estimator={p.rl.estimator}, "
               f"G={p.rl.group_size}, test n={ev['n']}")
        for r in rows:
            tracker.log_scalar("test.rl_exact_by_sampling_steps", r["after_exact_accuracy"], r["sampling_steps"])
        last = history[-1] if history else {}
        metrics = {"profile": p.profile, "estimator": p.rl.estimator, "group_size": p.rl.group_size,
                   "train_steps": res["steps"], "train_minutes": res["minutes"],
                   "final_reward_mean": last.get("reward_mean"), "final_solve_rate": last.get("solve_rate"),
                   "exact_accuracy_before": ev["before"]["exact_accuracy"],
                   "exact_accuracy_after": ev["after"]["exact_accuracy"], **ev, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "rl": asdict(p.rl)}
    return _tracked("rl", cfg, p.common.seed, run)


def trajectory_picture(checkpoint: str | Path, puzzle, out: str | Path | None = None, *, over: str = "steps",
                       steps: int | None = None, seed: int = 0, device="cpu"):
    """Draw `puzzle` (digits (C,), 0 = blank) along the trajectory of a teacher or TDRM checkpoint.
    Writes a PNG to `out` (a path or a binary file object); returns the `BoardPath`."""
    from .eval.plots import trajectory_png
    from .eval.trajectory import tdrm_path as tdrm_board_path
    from .eval.trajectory import teacher_path as teacher_board_path
    from .checkpoint import load_tdrm

    kind = load_checkpoint(checkpoint).get("kind")
    if kind == "tdrm":
        model, codec, schedule, ck = load_tdrm(checkpoint, device)
        if ck["teacher"]["cells"] != len(puzzle):
            raise ValueError(f"size mismatch: {checkpoint} models {ck['teacher']['cells']}-cell boards, "
                             f"the puzzle has {len(puzzle)} cells")
        d = ck["config"]["distill"]
        path = tdrm_board_path(model, codec, schedule, puzzle, over=over, sampler=d["sampler"],
                               steps=steps or d["sample_steps"], eta=d["eta"], seed=seed, device=device)
    else:
        model, ck = load_teacher(checkpoint, device)
        check_size(ck, len(puzzle), "the puzzle")
        path = teacher_board_path(model, puzzle, device)
    if out is not None:
        trajectory_png(path, out)
    return path


def report(out: str | Path, *, metrics_dir="metrics", plots_dir="plots", data_dir: str | Path | None = None,
           teacher_path: str | Path | None = None, tdrm_path: str | Path | None = None, puzzle_index: int = 0,
           device="cpu") -> Path:
    """The self-contained HTML report (tdrm.eval.report): metrics files, Sacred runs (FileStorage,
    or MongoDB with TDRM_MONGO_URL), curves, and test puzzle `puzzle_index` along the teacher's and
    TDRM's trajectories when the data and checkpoints exist."""
    import io

    from .eval.report import write_report
    from .tracking.store import list_runs, open_store

    notes = []
    try:
        records = list_runs(open_store())
    except (FileNotFoundError, ConnectionError) as e:
        records = []
        notes.append(f"runs: {e}")
    pictures = []
    if data_dir and Path(data_dir, "test.npz").exists():
        test = load_split(data_dir, "test")
        puzzle = np.asarray(test.puzzles[puzzle_index])
        for ck_path, what, over in ((teacher_path, "teacher", "steps"), (tdrm_path, "TDRM", "steps"),
                                    (tdrm_path, "TDRM", "sampling")):
            if ck_path and Path(ck_path).exists():
                buf = io.BytesIO()
                trajectory_picture(ck_path, puzzle, buf, over=over, device=device)
                pictures.append((buf.getvalue(), f"{what} ({ck_path}), test puzzle {puzzle_index}, per "
                                 + ("supervision step" if over == "steps" else "sampling step")))
    return write_report(out, metrics_dir=metrics_dir, plots_dir=plots_dir, records=records, pictures=pictures,
                        note=" ".join(notes))
