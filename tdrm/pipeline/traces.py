"""DVC stage `traces`: record the teacher's trajectories."""
from __future__ import annotations

from dataclasses import asdict

from .. import config
from ..checkpoint import load_teacher
from ..device import resolve_device, set_threads
from ..dist import setup
from ..tasks import require_task
from .common import _finish, _tracked_ranks

def traces_stage(params_path: str, data_dir: str, model_path: str, out_dir: str, metrics_path: str) -> dict:
    from ..traces.record import record

    p = config.load(params_path)
    task = require_task(data_dir, "traces", ("sudoku", "arc"))
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)  # torchrun's ranks, or one process
    if task == "arc" and world.distributed:
        raise ValueError("ARC traces are recorded by one process (dist.nproc: 1); the data-parallel recording is Sudoku's")

    def run(tracker):
        model, ck = load_teacher(model_path, device)
        if task == "arc":
            from ..tasks.arc.traces import record_arc
            res = record_arc(model, model_path, data_dir, out_dir, p.traces, p.common.seed, device)
        else:
            res = record(model, model_path, data_dir, out_dir, p.traces, p.common.seed, device, world=world)
        if not world.main:  # rank 0 writes the manifests, the metrics and the Sacred run
            return res
        metrics = {"profile": p.profile, **{k: v for k, v in res.items() if k != "splits"},
                   **{f"{s}_puzzles": v["puzzles"] for s, v in res["splits"].items()},
                   "world_size": world.size, "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    cfg = {"profile": p.profile, "common": asdict(p.common), "traces": asdict(p.traces)}
    return _tracked_ranks("traces", cfg, p.common.seed, run, world)
