"""DVC stages `distill` and `distill_control`: the trajectory denoiser (and its K = 1 control)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import config
from ..checkpoint import load_teacher
from ..device import resolve_device, set_threads
from ..dist import setup
from .common import _finish_training, _tracked_ranks

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
        return _finish_training(tracker, world, p.profile, res, plot_path, metrics_path)

    cfg = {"profile": p.profile, "common": asdict(p.common), "distill": asdict(p.distill)}
    return _tracked_ranks(name, cfg, p.common.seed, run, world)
