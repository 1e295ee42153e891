"""One rank of the data-parallel tests (tests/train/test_dist.py), launched by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/dist_worker.py \
        MODE DIR OUT [CRASH_RANK CRASH_STEP]

MODE teacher: the tiny teacher on the dataset in DIR; distill: the tiny denoiser on DIR/tr with
the teacher DIR/t.pt (chain: the same with the chain carry); evaluate: the evaluate stage (teacher and
TDRM DIR/tdrm.pt on DIR's test split, params DIR/params.yaml) writing into the directory OUT; traces: the teacher DIR/t.pt's traces of DIR's puzzles into OUT (a directory). OUT is the final checkpoint; the resume file is OUT + ".resume". With
CRASH_RANK and CRASH_STEP, that rank dies (os._exit(3)) when step CRASH_STEP is logged.
"""
import os
import sys
from pathlib import Path

import torch

from tdrm.config import Traces
from tdrm.dist import setup, teardown
from tdrm.tracking.base import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import tiny_params  # noqa: E402

TEACHER = {"teacher": {"steps": 8, "eval_every": 0, "ckpt_every": 4, "warmup": 4}}
TRACES = Traces(limit=20, shard_size=8, num_aug=1)  # 40 train items in 5 shards, 20 val in 3: uneven over ranks
DISTILL = {"distill": {"steps": 12, "eval_every": 0, "ckpt_every": 4, "batch": 32}}
# the chain carry: every rank keeps the chains of its rows; batches of 8 so that epochs end in short batches
CHAIN = {"distill": {"steps": 12, "eval_every": 0, "ckpt_every": 4, "batch": 8, "chain_prob": 0.7}}


class Crash(Tracker):
    def __init__(self, rank: int, at: int):
        self.rank, self.at = rank, at

    def log_scalar(self, name, value, step):
        if step == self.at and self.rank == int(os.environ.get("RANK", "0")):
            os._exit(3)


def main(mode: str, d: str, out: str, crash: tuple[int, int] | None = None) -> None:
    torch.set_num_threads(1)
    world, device = setup(torch.device("cpu"), timeout_s=60)
    tracker = Crash(*crash) if crash else Tracker()
    d = Path(d)
    if mode == "teacher":
        from tdrm.train.teacher import train_teacher
        train_teacher(tiny_params(TEACHER), d, out, resume_path=out + ".resume", tracker=tracker, progress=False,
                      log_every=1, world=world, device=device)
    elif mode == "traces":
        from tdrm.checkpoint import load_teacher
        from tdrm.traces.record import record
        teacher, _ = load_teacher(d / "t.pt")
        record(teacher, d / "t.pt", d, out, TRACES, 0, device, progress=False, world=world)
    elif mode == "evaluate":  # the evaluate stage with DIR/params.yaml, DIR/t.pt and DIR/tdrm.pt; OUT a directory
        from tdrm.pipeline.evaluate import evaluate_stage
        out = Path(out)
        evaluate_stage(str(d / "params.yaml"), str(d), str(d / "t.pt"), str(out / "teacher.json"), str(out / "t.csv"),
                       str(d / "tdrm.pt"), None, str(out / "tdrm.json"), str(out / "plots"))
    else:
        from tdrm.checkpoint import load_teacher
        from tdrm.train.distill import train_distill
        teacher, _ = load_teacher(d / "t.pt")
        train_distill(tiny_params(CHAIN if mode == "chain" else DISTILL), d / "tr", teacher, out, resume_path=out + ".resume", tracker=tracker,
                      progress=False, log_every=1, world=world, device=device)
    teardown(world)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], (int(a[3]), int(a[4])) if len(a) > 3 else None)
