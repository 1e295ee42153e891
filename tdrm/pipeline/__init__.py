"""The DVC stages as library calls: each reads its params, runs inside a tracked run, writes metrics.

One module per stage, so that a stage imports only what it runs (its `deps:` in dvc.yaml are that
import closure, checked by tests/test_dvc_graph.py). Stage scripts in `stages/` only pass paths
in. Tracking is Sacred (tdrm/tracking/sacred_run.py).

    from tdrm.pipeline.teacher import teacher_stage   # what stages/teacher.py does
    from tdrm.pipeline import teacher_stage           # the same, loaded on first use
"""
from __future__ import annotations

import importlib

_HOME = {"data_stage": "data", "teacher_stage": "teacher", "traces_stage": "traces", "distill_stage": "distill",
         "evaluate_stage": "evaluate", "rl_stage": "rl", "report_stage": "report", "trajectory_picture": "report"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
