"""One rank of the data-parallel tests (tests/train/test_dist.py), launched by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/dist_worker.py \
        MODE DIR OUT [CRASH_RANK CRASH_STEP]

MODE teacher: the tiny teacher on the dataset in DIR; distill: the tiny denoiser on DIR/tr with
the teacher DIR/t.pt (chain: the same with the chain carry); evaluate: the evaluate stage (teacher and
TDRM DIR/tdrm.pt on DIR's test split, params DIR/params.yaml) writing into the directory OUT; traces: the teacher DIR/t.pt's traces of DIR's puzzles into OUT (a directory); rl: RL on DIR/tdrm.pt and DIR's puzzles, each
rank writing OUT.rankR.json (its rollout puzzles per call, the rows it logged, its final weights), rank 1
dropping some groups (`RL_DROPPED`); rl_plain: the same without the drops. OUT is the final checkpoint; the resume file is OUT + ".resume". With
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
# 4 puzzles per rollout batch (2 per rank), refills on; rank 1 drops the groups of its rollout calls
# 2-4 (RL_DROPPED): at step 2 it keeps none after 3 rounds and steps with rank 0's gradient alone
RL = {"rl": {"puzzles": 4, "group_size": 4, "steps": 6, "eval_every": 3, "val_limit": 10, "ckpt_every": 2,
             "filter_groups": True, "max_rollout_rounds": 3}}
RL_DROPPED = (2, 3, 4)


class Crash(Tracker):
    def __init__(self, rank: int, at: int):
        self.rank, self.at = rank, at

    def log_scalar(self, name, value, step):
        if step == self.at and self.rank == int(os.environ.get("RANK", "0")):
            os._exit(3)


class Rows(Tracker):
    """Records the rows a rank logs."""

    def __init__(self, inner: Tracker):
        self.inner, self.rows = inner, []

    def log_row(self, prefix, row):
        self.rows.append(row)
        super().log_row(prefix, row)

    def log_scalar(self, name, value, step):
        self.inner.log_scalar(name, value, step)


def run_rl(d: Path, out: str, tracker: Tracker, world, device, drops: tuple = RL_DROPPED) -> None:
    """RL with every rank's rollout puzzles, logged rows and final weights in OUT.rankR.json."""
    import json

    import tdrm.rl.train as rl
    calls, orig, policy = [], rl.rollout_batch, []

    def rollout_batch(model, codec, schedule, puzzles, *a, **k):
        calls.append(puzzles.tolist())
        policy[:] = [model]  # the rank's policy (trained in place)
        batch, stats = orig(model, codec, schedule, puzzles, *a, **k)
        if world.rank == 1 and len(calls) in drops:  # as if every group's rewards were equal
            return None, {**stats, "skipped_groups": stats["groups"], "trained_samples": 0}
        return batch, stats
    rl.rollout_batch = rollout_batch
    rows = Rows(tracker)
    res = rl.train_rl(tiny_params(RL), d / "tdrm.pt", d, out, resume_path=out + ".resume", tracker=rows,
                      progress=False, log_every=1, world=world, device=device)
    Path(f"{out}.rank{world.rank}.json").write_text(json.dumps(
        {"calls": calls, "rows": rows.rows, "history": res["history"],
         "weights": {k: v.flatten()[:50].tolist() for k, v in policy[0].state_dict().items()}}))


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
    elif mode in ("rl", "rl_plain"):
        run_rl(d, out, tracker, world, device, RL_DROPPED if mode == "rl" else ())
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
