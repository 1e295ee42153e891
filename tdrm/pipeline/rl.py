"""DVC stage `rl`: GRPO on the distilled TDRM, evaluated before and after."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..device import resolve_device, set_threads
from ..dist import setup
from ..tasks import require_task
from .common import _finish, _tracked_ranks, _write_csv

RL_HEADLINE = {"n": "n", "exact": "after.exact_accuracy", "ci_low": "after.ci95.0", "ci_high": "after.ci95.1",
               "before_exact": "before.exact_accuracy", "diff_points": "difference_points",
               "p_value": "paired_after_vs_before.p_value", "steps": "sampling_steps",
               "train_minutes": "train_minutes", "world_size": "world_size", "sacred_run_id": "sacred_run_id"}

def rl_stage(params_path: str, data_dir: str, tdrm_path: str, model_out: str, metrics_path: str,
             plots_dir: str = "plots", resume_dir: str = "checkpoints") -> dict:
    """RL (`rl.estimator`) on the distilled TDRM (`rl` params), then the test split before and after RL:
    metrics/rl.json (+ metrics/details/rl.json), plots/rl_train.csv (reward curve), plots/rl_steps.{csv,png}.
    Under torchrun the ranks share the rollouts and the evaluation (`tdrm.rl.train`); rank 0 writes."""
    from ..eval.plots import rl_png
    from ..rl.train import before_after, train_rl

    p = config.load(params_path)
    require_task(data_dir, "rl", ("sudoku", "arc"))  # ARC: rewards on training rows (tdrm/tasks/arc/rl.py)
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process

    def run(tracker):
        res = train_rl(p, tdrm_path, data_dir, model_out, resume_path=Path(resume_dir) / "rl-resume.pt",
                       tracker=tracker, progress=world.main, world=world, device=device)
        history = res.pop("history")
        ev, rows = before_after(p, tdrm_path, model_out, data_dir, device, progress=world.main, world=world)
        if not world.main:
            return ev
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
                   "exact_accuracy_after": ev["after"]["exact_accuracy"], **ev, "world_size": world.size,
                   "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics, RL_HEADLINE)

    cfg = {"profile": p.profile, "common": asdict(p.common), "rl": asdict(p.rl)}
    return _tracked_ranks("rl", cfg, p.common.seed, run, world)
