"""DVC stage `teacher`: train the TRM teacher."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..device import resolve_device, set_threads
from ..dist import setup, teardown
from ..tracking.base import Tracker
from .common import _finish, _tracked, _write_csv

def teacher_stage(params_path: str, data_dir: str, model_out: str, metrics_path: str, plot_path: str,
                  resume_dir: str = "checkpoints") -> dict:
    from ..train.teacher import train_teacher

    p = config.load(params_path)
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process

    def run(tracker):
        res = train_teacher(p, data_dir, model_out, resume_path=Path(resume_dir) / "teacher-resume.pt",
                            tracker=tracker, world=world, device=device)
        history = res.pop("history")
        if not world.main:  # rank 0 writes the files and the Sacred run
            return res
        _write_csv(plot_path, history)
        metrics = {"profile": p.profile, **res, "world_size": world.size, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "teacher": asdict(p.teacher), "dist": world.record()}
    try:
        return _tracked("teacher", cfg, p.common.seed, run) if world.main else run(Tracker())
    finally:
        teardown(world)
