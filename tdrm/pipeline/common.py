"""What every stage shares: the tracked run, JSON / CSV writers, the metrics file."""
from __future__ import annotations

import csv
import json
from pathlib import Path


def _tracked(stage: str, cfg: dict, seed: int, fn):
    from ..tracking.sacred_run import tracked_run
    return tracked_run(stage, cfg, fn, seed)


def _write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_csv(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def _finish(tracker, metrics_path: str, metrics: dict) -> dict:
    """Write the stage's DVC metrics file and attach it to the Sacred run."""
    _write_json(metrics_path, metrics)
    tracker.add_artifact(metrics_path)
    return metrics
