"""DVC stage `data`: build the puzzle splits."""
from __future__ import annotations

from dataclasses import asdict

from .. import config
from ..data.dataset import build
from .common import _finish, _tracked

def data_stage(params_path: str, out_dir: str, metrics_path: str) -> dict:
    p = config.load(params_path)

    def run(tracker):
        meta = build(p.data, out_dir)
        metrics = {"profile": p.profile, "board": meta["board"], "classes": meta["classes"],
                   **{f"{s}_puzzles": c["puzzles"] for s, c in meta["counts"].items()},
                   "mean_givens_test": meta["mean_givens"]["test"], "sacred_run_id": tracker.run_id}
        return _finish(tracker, metrics_path, metrics)

    return _tracked("data", {"profile": p.profile, "data": asdict(p.data)}, p.common.seed, run)
