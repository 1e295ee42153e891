"""Pictures of trajectories and the offline HTML report (the `report` stage, `tdrm report`, `tdrm plot`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import check_size, load_teacher
from ..checkpoint import load as load_checkpoint
from ..data.dataset import load_split

def trajectory_picture(checkpoint: str | Path, puzzle, out: str | Path | None = None, *, over: str = "steps",
                       steps: int | None = None, seed: int = 0, device="cpu"):
    """Draw `puzzle` (digits (C,), 0 = blank) along the trajectory of a teacher or TDRM checkpoint.
    Writes a PNG to `out` (a path or a binary file object); returns the `BoardPath`."""
    from ..eval.plots import trajectory_png
    from ..eval.trajectory import tdrm_path as tdrm_board_path
    from ..eval.trajectory import teacher_path as teacher_board_path
    from ..checkpoint import load_tdrm

    kind = load_checkpoint(checkpoint).get("kind")
    if kind == "tdrm":
        model, codec, schedule, ck = load_tdrm(checkpoint, device)
        if ck["teacher"]["cells"] != len(puzzle):
            raise ValueError(f"size mismatch: {checkpoint} models {ck['teacher']['cells']}-cell boards, "
                             f"the puzzle has {len(puzzle)} cells")
        d = ck["config"]["distill"]
        path = tdrm_board_path(model, codec, schedule, puzzle, over=over, sampler=d["sampler"],
                               steps=steps or d["sample_steps"], eta=d["eta"], seed=seed, device=device)
    else:
        model, ck = load_teacher(checkpoint, device)
        check_size(ck, len(puzzle), "the puzzle")
        path = teacher_board_path(model, puzzle, device)
    if out is not None:
        trajectory_png(path, out)
    return path


def report(out: str | Path, *, metrics_dir="metrics", plots_dir="plots", data_dir: str | Path | None = None,
           teacher_path: str | Path | None = None, tdrm_path: str | Path | None = None, puzzle_index: int = 0,
           device="cpu", runs: bool = True) -> Path:
    """The self-contained HTML report (tdrm.eval.report): metrics files, Sacred runs (FileStorage,
    or MongoDB with TDRM_MONGO_URL), curves, and test puzzle `puzzle_index` along the teacher's and
    TDRM's trajectories when the data and checkpoints exist. With `runs=False` (the `report` DVC
    stage) the page is a function of its declared inputs only: the same inputs give the same bytes."""
    import io

    from ..eval.report import write_report
    from ..tracking.store import list_runs, open_store

    notes, records = [], []
    if runs:
        try:
            records = list_runs(open_store())
        except (FileNotFoundError, ConnectionError) as e:
            notes.append(f"runs: {e}")
    else:
        notes.append("Sacred runs: see `tdrm runs list` or `tdrm report` (this page holds only the DVC stage's inputs).")
    pictures = []
    if data_dir and Path(data_dir, "test.npz").exists():
        test = load_split(data_dir, "test")
        puzzle = np.asarray(test.puzzles[puzzle_index])
        for ck_path, what, over in ((teacher_path, "teacher", "steps"), (tdrm_path, "TDRM", "steps"),
                                    (tdrm_path, "TDRM", "sampling")):
            if ck_path and Path(ck_path).exists():
                buf = io.BytesIO()
                trajectory_picture(ck_path, puzzle, buf, over=over, device=device)
                pictures.append((buf.getvalue(), f"{what} ({ck_path}), test puzzle {puzzle_index}, per "
                                 + ("supervision step" if over == "steps" else "sampling step")))
    return write_report(out, metrics_dir=metrics_dir, plots_dir=plots_dir, records=records, pictures=pictures,
                        note=" ".join(notes))


def report_stage(metrics_dir: str, plots_dir: str, data_dir: str, teacher_path: str, tdrm_path: str, out: str) -> Path:
    """DVC stage `report`: the HTML page from the declared metrics, plots, test split and
    checkpoints only (no Sacred runs, no clock), on the CPU."""
    from ..tasks import require_task
    require_task(data_dir, "report")
    return report(out, metrics_dir=metrics_dir, plots_dir=plots_dir, data_dir=data_dir, teacher_path=teacher_path,
                  tdrm_path=tdrm_path, device="cpu", runs=False)
