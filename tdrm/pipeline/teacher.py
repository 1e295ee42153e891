"""DVC stage `teacher`: train the TRM teacher on the task its data directory holds (Sudoku or ARC)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..device import resolve_device, set_threads
from ..dist import setup
from .common import _finish_training, _tracked_ranks

def teacher_stage(params_path: str, data_dir: str, model_out: str, metrics_path: str, plot_path: str,
                  resume_dir: str = "checkpoints") -> dict:
    from ..tasks import teacher_data
    from ..train.teacher import train_teacher

    p = config.load(params_path)
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process

    def run(tracker):
        data = teacher_data(data_dir, p.teacher.eval_limit)  # the task of the data directory (tdrm/tasks)
        res = train_teacher(p, data_dir, model_out, resume_path=Path(resume_dir) / "teacher-resume.pt",
                            tracker=tracker, world=world, device=device, data=data)
        return _finish_training(tracker, world, p.profile, res, plot_path, metrics_path)

    cfg = {"profile": p.profile, "common": asdict(p.common), "teacher": asdict(p.teacher)}
    return _tracked_ranks("teacher", cfg, p.common.seed, run, world)
