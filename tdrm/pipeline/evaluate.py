"""DVC stage `evaluate`: the teacher on the test split, and TDRM against it on the same puzzles."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..checkpoint import check_size, load_teacher
from ..data.dataset import load_split
from ..device import resolve_device, set_threads
from ..eval.teacher import evaluate
from ..dist import setup
from ..tasks import require_task
from .common import _finish, _tracked_ranks, _write_csv

TEACHER_HEADLINE = {"n": "n", "exact": "exact_accuracy", "ci_low": "ci95.0", "ci_high": "ci95.1",
                    "cell": "cell_accuracy", "seconds": "seconds", "train_minutes": "train_minutes",
                    "sacred_run_id": "sacred_run_id"}
TDRM_HEADLINE = {"n": "n", "exact": "tdrm.exact_accuracy", "ci_low": "tdrm.ci95.0", "ci_high": "tdrm.ci95.1",
                 "teacher_exact": "teacher.exact_accuracy", "diff_points": "difference_points",
                 "p_value": "paired_tdrm_vs_teacher.p_value", "flops_ratio": "flops_ratio_tdrm_to_teacher",
                 "control_exact": "control_final_state_only.exact_accuracy",
                 "p_vs_control": "control_final_state_only.paired_tdrm_vs_control.p_value",
                 "best_of_n_exact": "best_of_n.exact_accuracy", "seconds": "tdrm.seconds",
                 "sacred_run_id": "sacred_run_id"}

def evaluate_stage(params_path: str, data_dir: str, model_path: str, metrics_path: str,
                   plot_path: str, tdrm_path: str | None = None, control_path: str | None = None,
                   tdrm_metrics_path: str | None = None, plots_dir: str = "plots") -> dict:
    """The teacher on the test split; with `tdrm_path`, also TDRM against it on the same puzzles
    (metrics/tdrm.json and metrics/details/tdrm.json, accuracy-against-steps and per-step CSV + PNG in `plots_dir`). The HTML
    report is the `report` stage's (tdrm/pipeline/report.py). Under torchrun every rank evaluates its
    rows of each batch and the per-puzzle results are gathered before the paired tests; rank 0 writes."""
    p = config.load(params_path)
    task = require_task(data_dir, "evaluate", ("sudoku", "arc"))
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process
    if task == "arc":
        return _evaluate_arc(p, data_dir, model_path, metrics_path, plot_path, tdrm_path, control_path,
                             tdrm_metrics_path, plots_dir, world, device)

    def run(tracker):
        model, ck = load_teacher(model_path, device)
        test = load_split(data_dir, "test")
        check_size(ck, test.shape.cells, f"{data_dir}/test.npz")
        if p.evaluate.limit:
            test = test.take(list(range(min(p.evaluate.limit, len(test)))))
        res = evaluate(model, test, p.evaluate.batch_size, device, progress=True, world=world)
        if tdrm_path:  # every rank takes part (its rows of each batch); rank 0 writes
            from ..eval.compare import compare
            tdrm_res = compare(model, tdrm_path, test, p.evaluate, p.common.seed, device, control_path=control_path,
                               progress=world.main, world=world)
        if not world.main:
            return res
        for k, acc in enumerate(res["per_step_exact_accuracy"], start=1):
            tracker.log_scalar("test.exact_accuracy_by_step", acc, k)
        _write_csv(plot_path, [{"step": k, "exact_accuracy": a, "cell_accuracy": c} for k, (a, c) in
                               enumerate(zip(res["per_step_exact_accuracy"], res["per_step_cell_accuracy"]), 1)])
        metrics = {"profile": p.profile, "weights": "ema", "split": "test", **res,
                   "train_steps": ck["step"], "train_minutes": ck["elapsed"] / 60,
                   "sacred_run_id": tracker.run_id}
        _finish(tracker, metrics_path, metrics, TEACHER_HEADLINE)
        if tdrm_path:
            _write_tdrm(p, tdrm_res, tdrm_metrics_path, plots_dir, tracker)
        return metrics

    cfg = {"profile": p.profile, "common": asdict(p.common), "evaluate": asdict(p.evaluate)}
    return _tracked_ranks("evaluate", cfg, p.common.seed, run, world)


def _write_tdrm(p, res, metrics_path, plots_dir, tracker) -> dict:
    """Rank 0: the TDRM comparison's metrics, CSVs and plots."""
    from ..eval.plots import accuracy_by_steps_png, per_step_png

    metrics, steps_rows, per_step_rows = res
    plots = Path(plots_dir)
    _write_csv(plots / "tdrm_steps.csv", steps_rows)
    _write_csv(plots / "tdrm_per_step.csv", per_step_rows)
    title = f"{p.profile} profile, test n={metrics['n']}"
    accuracy_by_steps_png(steps_rows, plots / "tdrm_steps.png", title)
    per_step_png(per_step_rows, plots / "tdrm_per_step.png", title)
    for r in steps_rows:
        tracker.log_scalar("test.tdrm_exact_by_sampling_steps", r["exact_accuracy"], r["sampling_steps"])
    metrics = {"profile": p.profile, "split": "test", **metrics, "sacred_run_id": tracker.run_id}
    return _finish(tracker, metrics_path, metrics, TDRM_HEADLINE)


ARC_TEACHER_HEADLINE = {"version": "version", "split": "split", "tasks": "teacher.tasks",
                        "test_inputs": "teacher.test_inputs", "pass1": "teacher.pass@1", "pass2": "teacher.pass@2",
                        "pass2_strict": "teacher.pass@2_strict", "baseline_pass2": "baseline.pass@2",
                        "p_vs_baseline": "paired_inputs_teacher_vs_baseline.p_value", "sacred_run_id": "sacred_run_id"}
ARC_TDRM_HEADLINE = {"version": "version", "split": "split", "tasks": "tdrm.tasks", "pass1": "tdrm.pass@1",
                     "pass2": "tdrm.pass@2", "pass2_strict": "tdrm.pass@2_strict", "teacher_pass2": "teacher.pass@2",
                     "p_vs_teacher": "paired_inputs_tdrm_vs_teacher.p_value", "control_pass2": "control.pass@2",
                     "baseline_pass2": "baseline.pass@2", "sacred_run_id": "sacred_run_id"}


def _evaluate_arc(p, data_dir, model_path, metrics_path, plot_path, tdrm_path, control_path, tdrm_metrics_path,
                  plots_dir, world, device) -> dict:
    """ARC (issue 16): the teacher and the trivial baseline on the held-out test tasks, voted over
    augmentations, ARC Prize pass@1 / pass@2 / strict (metrics/teacher.json); with `tdrm_path`, TDRM
    beside them at each of `evaluate.tdrm_steps` denoiser calls and the K = 1 control
    (metrics/tdrm.json), pass@2 by sampling steps and by generated row (plots). One process."""
    from ..checkpoint import load_tdrm
    from ..eval.plots import accuracy_by_steps_png, per_step_png
    from ..tasks.arc.dataset import load_set
    from ..tasks.arc.evaluate import teacher_pass_by_step, teacher_vs_baseline, tdrm_vs_teacher
    if world.distributed:
        raise ValueError("ARC evaluation runs in one process (dist.nproc: 1)")
    if p.evaluate.best_of != 1 or p.evaluate.limit is not None:
        raise ValueError(f"evaluate.best_of and evaluate.limit are Sudoku's (ARC votes over every augmentation of "
                         f"every held-out test input): set best_of: 1 and limit: null, got {p.evaluate.best_of} "
                         f"and {p.evaluate.limit}")
    arc = load_set(data_dir)
    bs = p.evaluate.batch_size

    def run(tracker):
        model, ck = load_teacher(model_path, device)
        if model.cfg.puzzles != arc.puzzles:
            raise ValueError(f"{model_path} has {model.cfg.puzzles} puzzle embeddings, {data_dir} has {arc.puzzles} "
                             "puzzle ids: the teacher was not trained on this ARC set")
        res = teacher_vs_baseline(model, arc, "test", bs, device)
        by_step = teacher_pass_by_step(model, arc, "test", bs, device)
        _write_csv(plot_path, [{"step": k, "pass@2": v} for k, v in enumerate(by_step, 1)])
        metrics = {"profile": p.profile, "weights": "ema", **res, "teacher_pass@2_by_step": by_step,
                   "train_steps": ck["step"], "train_minutes": ck["elapsed"] / 60, "sacred_run_id": tracker.run_id}
        _finish(tracker, metrics_path, metrics, ARC_TEACHER_HEADLINE)
        if tdrm_path:
            m, codec, sched, _ = load_tdrm(tdrm_path, device)
            control = load_tdrm(control_path, device)[:3] if control_path else None
            steps = tuple(p.evaluate.tdrm_steps)
            r = tdrm_vs_teacher(m, codec, sched, arc, "test", steps, p.common.seed, bs, device, control=control)
            plots = Path(plots_dir)
            rows = [{**row, "teacher_exact_accuracy": r["teacher"]["pass@2"]} for row in r["accuracy_by_sampling_steps"]]
            per_row = [{"step": k, "teacher_exact_accuracy": by_step[k - 1] if k <= len(by_step) else float("nan"),
                        "tdrm_exact_accuracy": v, "cosine_to_teacher": float("nan"),
                        "board_agreement_with_teacher": float("nan")}
                       for k, v in enumerate(r["tdrm_pass@2_by_row"], 1)]
            _write_csv(plots / "tdrm_steps.csv", rows)
            _write_csv(plots / "tdrm_per_step.csv", per_row)
            title = f"{p.profile} profile, ARC test tasks n={r['tasks']} (pass@2)"
            accuracy_by_steps_png(rows, plots / "tdrm_steps.png", title)
            per_step_png(per_row, plots / "tdrm_per_step.png", title)
            _finish(tracker, tdrm_metrics_path, {"profile": p.profile, **r, "sacred_run_id": tracker.run_id},
                    ARC_TDRM_HEADLINE)
        return metrics

    cfg = {"profile": p.profile, "common": asdict(p.common), "evaluate": asdict(p.evaluate)}
    return _tracked_ranks("evaluate", cfg, p.common.seed, run, world)
