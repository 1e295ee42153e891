"""DVC stages `distill` and `distill_control`: the trajectory denoiser (and its K = 1 control)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..checkpoint import load_teacher
from ..device import resolve_device, set_threads
from ..dist import setup, teardown
from ..tracking.base import Tracker
from .common import _finish, _tracked, _write_csv

def distill_stage(params_path: str, traces_dir: str, teacher_path: str, model_out: str, metrics_path: str,
                  plot_path: str, final_only: bool = False, resume_dir: str = "checkpoints") -> dict:
    """Train the trajectory denoiser on the traces; `final_only` trains the K = 1 control."""
    import dataclasses

    from ..train.distill import train_distill

    p = config.load(params_path)
    if final_only:
        p = dataclasses.replace(p, distill=dataclasses.replace(p.distill, final_only=True))
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process
    name = "distill_control" if final_only else "distill"

    def run(tracker):
        teacher, _ = load_teacher(teacher_path, device)
        res = train_distill(p, traces_dir, teacher, model_out, resume_path=Path(resume_dir) / f"{name}-resume.pt",
                            tracker=tracker, world=world, device=device)
        history = res.pop("history")
        if not world.main:  # rank 0 writes the files and the Sacred run
            return res
        _write_csv(plot_path, history)
        metrics = {"profile": p.profile, **res, "world_size": world.size, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "distill": asdict(p.distill), "dist": world.record()}
    try:
        return _tracked(name, cfg, p.common.seed, run) if world.main else run(Tracker())
    finally:
        teardown(world)
