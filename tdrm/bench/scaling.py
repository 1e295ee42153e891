"""`python -m tdrm.bench scaling`: training throughput of the data-parallel stages (issue 15).

For each process count N of `--procs` and each stage of `--stages` (teacher, distill, rl), the real
training loop (`train_teacher` / `train_distill` at the profile's global batch, `train_rl` at its
rl.puzzles x rl.group_size rollouts per step from the distilled `--tdrm`; `--steps` steps, no
evaluation or checkpoints) runs under `torchrun --standalone --nproc_per_node N`; rank 0 reports the
loop's wall time. Rows: samples (global batch x steps; rl: rollouts) per second, and the scaling efficiency against N = 1
(throughput_N / (N x throughput_1)). The run includes its first steps (and compilation when
`common.compile` is on), so use enough steps. On CPU the processes share the cores: expect
overhead, not speed-up; on a GPU node N is the number of GPUs.

    python -m torch.distributed.run ... -m tdrm.bench.scaling STAGE PARAMS PROFILE STEPS DATA TRACES TEACHER OUT TDRM

is what each launch runs (this module's `__main__`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def worker(stage: str, params_path: str, profile: str, steps: int, data: str, traces: str, teacher_path: str,
           out: str, tdrm_path: str | None = None) -> None:
    """One rank of one timed run (under torchrun); rank 0 writes the row to `out` (JSON)."""
    import torch

    from ..checkpoint import load_teacher
    from ..device import resolve_device, set_threads
    from ..dist import setup, teardown
    from . import _profile_params
    p = _profile_params(profile, params_path, {stage: {"steps": steps, "eval_every": 0, "ckpt_every": 0}})
    if stage not in STAGES:
        raise ValueError(f"scaling stages are {STAGES}, got {stage!r}")
    set_threads(p.common.threads)
    world, device = setup(resolve_device(p.common.device), p.dist.timeout_s)
    with tempfile.TemporaryDirectory() as tmp:
        if stage == "teacher":
            from ..train.teacher import train_teacher
            res = train_teacher(p, data, Path(tmp) / "t.pt", progress=False, world=world, device=device)
            batch = p.teacher.batch
        elif stage == "rl":
            from ..rl.train import train_rl
            res = train_rl(p, tdrm_path, data, Path(tmp) / "rl.pt", progress=False, world=world, device=device)
            batch = p.rl.puzzles * p.rl.group_size  # rollouts per step
        else:
            from ..train.distill import train_distill
            teacher, _ = load_teacher(teacher_path, device)
            res = train_distill(p, traces, teacher, Path(tmp) / "d.pt", progress=False, world=world, device=device)
            batch = p.distill.batch
    if world.main:
        seconds = res["minutes"] * 60
        Path(out).write_text(json.dumps({
            "stage": stage, "profile": profile, "processes": world.size, "backend": world.backend or "none",
            "global_batch": batch, "steps": steps, "seconds": round(seconds, 4),
            "samples_per_s": round(batch * steps / seconds, 1), "threads_per_process": torch.get_num_threads()}))
    teardown(world)


STAGES = ("teacher", "distill", "rl")


def bench_scaling(params_path: str, profile: str, procs: list[int], steps: int, data: str, traces: str,
                  teacher_path: str, stages=("teacher", "distill"), tdrm_path: str = "models/tdrm.pt") -> list[dict]:
    """Launch each (stage, N) under torchrun in turn; rows with the efficiency against N = 1."""
    rows = []
    for stage in stages:
        base = None
        for n in procs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "row.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                       "-m", "tdrm.bench.scaling", stage, params_path, profile, str(steps), data, traces,
                       teacher_path, str(out), tdrm_path]
                r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if r.returncode != 0 or not out.is_file():
                    raise RuntimeError(f"scaling run {stage} x {n} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
                row = json.loads(out.read_text())
            if base is None:
                base = row["samples_per_s"]
            row["efficiency_vs_first"] = round(row["samples_per_s"] / (base * n / procs[0]), 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    a = sys.argv[1:]
    worker(a[0], a[1], a[2], int(a[3]), a[4], a[5], a[6], a[7], a[8] if len(a) > 8 else None)
