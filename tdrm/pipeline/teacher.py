"""DVC stage `teacher`: train the TRM teacher."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..device import resolve_device, set_threads
from ..dist import setup
from .common import _finish_training, _tracked_ranks

def teacher_stage(params_path: str, data_dir: str, model_out: str, metrics_path: str, plot_path: str,
                  resume_dir: str = "checkpoints") -> dict:
    from ..train.teacher import train_teacher

    p = config.load(params_path)
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process

    def run(tracker):
        res = train_teacher(p, data_dir, model_out, resume_path=Path(resume_dir) / "teacher-resume.pt",
                            tracker=tracker, world=world, device=device)
        return _finish_training(tracker, world, p.profile, res, plot_path, metrics_path)

    cfg = {"profile": p.profile, "common": asdict(p.common), "teacher": asdict(p.teacher)}
    return _tracked_ranks("teacher", cfg, p.common.seed, run, world)
