"""Run a stage inside a Sacred run: FileStorage under `runs/` (absolute), MongoDB when configured.

`TDRM_RUNS_DIR` overrides the FileStorage directory. `TDRM_MONGO_URL` (and `TDRM_MONGO_DB`,
default `tdrm`) add a MongoObserver; if the server cannot be reached the stage says so and
records to FileStorage only. Under `dvc exp run --temp` / queued runs DVC works in a copy at
`<repo>/.dvc/tmp/exps/...`; the runs directory then still resolves to `<repo>/runs`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable

from ..paths import project_root
from .base import Tracker


# the files Sacred's FileStorageObserver writes itself: an artifact of one of these names would be
# refused (the observer then stops recording the run), so such an artifact is stored as artifact_<name>
RESERVED = frozenset({"run.json", "config.json", "cout.txt", "metrics.json", "info.json"})


def artifact_name(path, name: str | None = None) -> str:
    """The name an artifact is stored under in a Sacred run: `name` or the file's name, prefixed
    with `artifact_` where it is one of the run's own files (`RESERVED`)."""
    name = name or Path(path).name
    return f"artifact_{name}" if name in RESERVED else name


class SacredTracker(Tracker):
    def __init__(self, run):
        self._run = run
        self.run_id = str(run._id) if run._id is not None else None

    def log_scalar(self, name, value, step):
        self._run.log_scalar(name, float(value), int(step))

    def add_artifact(self, path, name=None):
        self._run.add_artifact(str(path), artifact_name(path, name))

    def info(self, key, value):
        self._run.info[key] = value


def runs_dir() -> Path:
    env = os.environ.get("TDRM_RUNS_DIR")
    return Path(env).resolve() if env else project_root() / "runs"


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def mongo_observer():
    """A MongoObserver for TDRM_MONGO_URL, or None (with a clear message) if unset/unreachable."""
    url = os.environ.get("TDRM_MONGO_URL")
    if not url:
        return None
    import pymongo
    from sacred.observers import MongoObserver

    db = os.environ.get("TDRM_MONGO_DB", "tdrm")
    try:
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
        client.admin.command("ping")
    except Exception as e:  # pymongo raises several connection error types
        from .base import mask_url
        print(f"TDRM_MONGO_URL={mask_url(url)} is unreachable ({type(e).__name__}); recording to FileStorage only",
              file=sys.stderr)
        return None
    return MongoObserver(client=client, db_name=db)


def tracked_run(stage: str, config: dict, fn: Callable[[Tracker], dict], seed: int) -> dict:
    """Run `fn(tracker)` as the main function of a Sacred experiment named `stage`."""
    import warnings

    with warnings.catch_warnings():  # Sacred imports pkg_resources, deprecated in setuptools 81
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from sacred import SETTINGS, Experiment
    from sacred.observers import FileStorageObserver

    SETTINGS.CAPTURE_MODE = "sys"  # fd capture would swallow tqdm's carriage returns
    SETTINGS.DISCOVER_SOURCES = "none"
    SETTINGS.DISCOVER_DEPENDENCIES = "none"
    ex = Experiment(f"tdrm.{stage}", save_git_info=False, interactive=True)
    ex.add_config({**config, "seed": seed})
    ex.observers.append(FileStorageObserver(str(runs_dir())))
    mongo = mongo_observer()
    if mongo is not None:
        ex.observers.append(mongo)
    root = project_root()

    @ex.main
    def main(_run):
        tracker = SacredTracker(_run)
        tracker.info("stage", stage)
        tracker.info("run_uid", uuid.uuid4().hex)  # the same run in FileStorage and MongoDB (runs sync)
        tracker.info("git_commit", _git_commit(root))
        for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            if os.environ.get(var):
                tracker.info(var.lower(), os.environ[var])
        return fn(tracker)

    run = ex.run()
    return run.result
