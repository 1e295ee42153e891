"""What every stage shares: the tracked run, JSON / CSV writers, the metrics files.

A stage's DVC metrics file holds its headline numbers under short keys shared across stages
(`exact`, `ci_low`, `ci_high`, `n`, `p_value`, ...), so `dvc metrics show`, `dvc metrics diff`
and `dvc exp show` read as tables; everything it measured goes to metrics/details/<name>.json
(a plain output, read by the report)."""
from __future__ import annotations

import csv
import json
from pathlib import Path


def _tracked(stage: str, cfg: dict, seed: int, fn):
    from ..tracking.sacred_run import tracked_run
    return tracked_run(stage, cfg, fn, seed)


def _tracked_ranks(stage: str, cfg: dict, seed: int, fn, world):
    """A stage that may run under torchrun: `_tracked` (the Sacred run, recording the launch) on rank
    0; the other ranks run `fn` with a null tracker and write nothing; the process group is left
    at the end whatever happens."""
    from ..dist import teardown
    from ..tracking.base import Tracker
    try:
        return _tracked(stage, {**cfg, "dist": world.record()}, seed, fn) if world.main else fn(Tracker())
    finally:
        teardown(world)


def _finish_training(tracker, world, profile: str, res: dict, plot_path: str, metrics_path: str) -> dict:
    """A training loop's result: rank 0 writes the curve (CSV) and the metrics file (with the world
    size); other ranks return the result and write nothing."""
    history = res.pop("history")
    if not world.main:
        return res
    _write_csv(plot_path, history)
    metrics = {"profile": profile, **res, "world_size": world.size, "sacred_run_id": tracker.run_id}
    return _finish(tracker, metrics_path, metrics)


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


def details_path(metrics_path: str | Path) -> Path:
    """metrics/NAME.json -> metrics/details/NAME.json."""
    metrics_path = Path(metrics_path)
    return metrics_path.parent / "details" / metrics_path.name


def headline(metrics: dict, spec: dict[str, str]) -> dict:
    """The headline numbers: key -> the value at a dotted path of `metrics` (integers index
    lists: "tdrm.ci95.0"), floats to 4 significant digits (the details file keeps them whole);
    a path that is absent (an optional comparison not run) is left out."""
    out = {}
    for key, path in spec.items():
        v = metrics
        for part in path.split("."):
            if isinstance(v, list) and part.isdigit() and int(part) < len(v):
                v = v[int(part)]
            elif isinstance(v, dict) and part in v:
                v = v[part]
            else:
                v = None
                break
        if isinstance(v, float):
            v = float(f"{v:.4g}")
        if v is not None:
            out[key] = v
    return out


def _finish(tracker, metrics_path: str, metrics: dict, spec: dict[str, str] | None = None) -> dict:
    """Write the stage's DVC metrics file (only the `spec` headline when given, everything in the
    details file beside it) and attach both to the Sacred run. Returns the full metrics."""
    if spec is not None:
        _write_json(details_path(metrics_path), metrics)
        tracker.add_artifact(str(details_path(metrics_path)))
        _write_json(metrics_path, headline(metrics, spec))
    else:
        _write_json(metrics_path, metrics)
    tracker.add_artifact(metrics_path)
    return metrics
