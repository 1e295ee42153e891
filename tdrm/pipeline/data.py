"""DVC stage `data`: build the task's dataset directory (Sudoku puzzle splits, or an ARC set)."""
from __future__ import annotations

from dataclasses import asdict

from .. import config
from ..tasks import check_task
from .common import _finish, _tracked


def data_stage(params_path: str, out_dir: str, metrics_path: str) -> dict:
    p = config.load(params_path)
    task = check_task(p.data.task)

    def run(tracker):
        metrics = _arc(p.data, out_dir) if task == "arc" else _sudoku(p.data, out_dir)
        return _finish(tracker, metrics_path, {"profile": p.profile, **metrics, "sacred_run_id": tracker.run_id})

    return _tracked("data", {"profile": p.profile, "data": asdict(p.data)}, p.common.seed, run)


def _sudoku(cfg, out_dir: str) -> dict:
    from ..data.dataset import build
    meta = build(cfg, out_dir)
    return {"board": meta["board"], "classes": meta["classes"],
            **{f"{s}_puzzles": c["puzzles"] for s, c in meta["counts"].items()},
            "mean_givens_test": meta["mean_givens"]["test"]}


def _arc(cfg, out_dir: str) -> dict:
    """The ARC set of `data.arc` (tdrm/tasks/arc/dataset.py), with `data.num_aug` augmentations per
    task and `data.seed`; what the teacher's `model.puzzles` must be is `puzzles`."""
    from ..tasks.arc import dataset as ds
    a = cfg.arc
    arc = ds.build(a.version, a.canvas, cfg.num_aug, cfg.seed, (a.dev_fraction, a.test_fraction), a.translate,
                   a.max_tasks)
    ds.save(arc, out_dir)
    return {"task": "arc", "version": arc.version, "canvas": arc.size,
            **{f"{s}_tasks": len(t) for s, t in arc.tasks.items()}, "puzzles": arc.puzzles,
            "train_rows": int(len(arc.train.inputs)),
            **{f"{s}_rows": int(len(ex.inputs)) for s, ex in arc.held_out.items()},
            **{f"{s}_test_inputs": sum(len(v) for v in arc.truths[s].values()) for s in arc.truths}}
