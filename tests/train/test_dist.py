"""Data-parallel training under torchrun (issue 15): 2 gloo processes at global batch B end with the
weights of 1 process at batch B; a rank that dies ends the job, naming it; resume needs the same
world size. The launches are real (`python -m torch.distributed.run`, tests/dist_worker.py)."""
import os
import subprocess
import sys
import time

import pytest
import torch

from tdrm import checkpoint
from tdrm.dist import SINGLE, World, from_env, loss_scale, per_rank_batch, rows

from ..conftest import ROOT, tiny_params, tiny_traces
from ..dist_worker import DISTILL, TEACHER, main as worker

# fp32 tolerance: the ranks' gradients are summed in another order than one process's batch. Adam and
# the recursion amplify rounding over steps: 1 vs 2 threads in ONE process already differ by 7.7e-7
# after 8 teacher steps and 5.8e-5 after 24 (measured), so the runs are short
RTOL, ATOL = 1e-4, 1e-5


def torchrun(n: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(ROOT / "tests" / "dist_worker.py"), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_weights(a_path, b_path, init=None):
    a, b = checkpoint.load(a_path), checkpoint.load(b_path)
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), rtol=RTOL, atol=ATOL), (part, k)
    if init is not None:  # and training moved them: the comparison is not of two untouched copies
        assert any(not torch.allclose(a["model"][k], init[k]) for k in init)
    return a, b


def test_rows_split_every_global_batch_into_disjoint_contiguous_slices():
    for n in [1, 5, 32, 33]:
        for size in [1, 2, 3, 4]:
            got = [rows(n, World(rank=r, size=size)) for r in range(size)]
            assert [i for s in got for i in range(n)[s]] == list(range(n))  # a partition, in rank order
            lengths = [s.stop - s.start for s in got]
            assert max(lengths) - min(lengths) <= 1
    assert rows(7, SINGLE) == slice(0, 7)


def test_loss_scale_makes_the_rank_average_the_global_mean_for_uneven_slices():
    g = torch.Generator().manual_seed(0)
    per_sample = torch.rand(9, generator=g)
    world = [World(rank=r, size=2) for r in range(2)]
    parts = [per_sample[rows(9, w)] for w in world]  # 5 and 4 rows
    avg = sum(p.mean() * loss_scale(len(p), 9, w) for p, w in zip(parts, world)) / 2  # what DDP computes
    assert avg.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    plain = sum(p.mean() for p in parts) / 2  # without the scale it is not the global mean
    assert abs(plain.item() - per_sample.mean().item()) > 1e-4
    assert loss_scale(16, 32, world[0]) == 1.0


def test_per_rank_batch_divides_or_names_the_problem():
    assert per_rank_batch(64, World(rank=1, size=4), "teacher.batch") == 16
    with pytest.raises(ValueError, match="teacher.batch = 64 does not divide over 3 processes"):
        per_rank_batch(64, World(rank=0, size=3), "teacher.batch")


def test_world_from_torchrun_environment():
    assert from_env({}) == SINGLE and from_env({"WORLD_SIZE": "1"}) == SINGLE
    w = from_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (w.rank, w.size, w.local_rank, w.nodes, w.main) == (5, 8, 1, 2, False)
    assert SINGLE.record() == {"world_size": 1, "backend": "none", "nodes": 1}


def test_teacher_on_two_ranks_equals_one_process(tmp_path):
    from tdrm.data.dataset import build, load_split
    from tdrm.models.trm import TRM
    p = tiny_params(TEACHER)
    build(p.data, tmp_path, progress=False)
    worker("teacher", str(tmp_path), str(tmp_path / "one.pt"))
    r = torchrun(2, "teacher", tmp_path, tmp_path / "two.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    shape = load_split(tmp_path, "train").shape
    init = TRM(p.teacher.model, shape.cells, shape.vocab).state_dict()  # what both runs started from
    one, two = assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt", init)
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["step"] == p.teacher.steps
    assert not (tmp_path / "two.pt.resume").exists()  # rank 0 removed its resume file at the end


def test_distill_on_two_ranks_equals_one_process_and_a_dead_rank_ends_the_job(tmp_path):
    tiny_traces(tmp_path, 30, 20)
    worker("distill", str(tmp_path), str(tmp_path / "one.pt"))
    r = torchrun(2, "distill", tmp_path, tmp_path / "two.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt")
    assert two["world_size"] == 2 and two["step"] == DISTILL["distill"]["steps"]
    # rank 1 dies at step 6 (after the step-4 checkpoint): the launcher fails, naming the rank, quickly
    t0 = time.perf_counter()
    r = torchrun(2, "distill", tmp_path, tmp_path / "crash.pt", 1, 6)
    assert r.returncode != 0 and time.perf_counter() - t0 < 120
    assert "rank      : 1" in r.stderr or "rank: 1" in r.stderr, r.stderr[-3000:]
    resume = tmp_path / "crash.pt.resume"
    mid = checkpoint.load(resume)
    assert mid["step"] == 4 and mid["world_size"] == 2
    assert any(not torch.allclose(mid["model"][k], v) for k, v in two["model"].items())  # steps 5-12 moved them
    with pytest.raises(ValueError, match="written by a run of 2 processes"):  # another world size is refused
        worker("distill", str(tmp_path), str(tmp_path / "crash.pt"))
    r = torchrun(2, "distill", tmp_path, tmp_path / "crash.pt")  # the same world size resumes and completes
    assert r.returncode == 0 and "resuming from" in r.stdout + r.stderr, r.stderr[-3000:]
    assert_same_weights(tmp_path / "two.pt", tmp_path / "crash.pt")


def test_chain_carry_on_two_ranks_equals_one_process_and_resumes(tmp_path):
    """Each rank carries the chains of its own rows (global slot indices), so 2 ranks train the
    1-process model; a crash after a checkpoint resumes every rank's chains."""
    tiny_traces(tmp_path, 30, 20)
    worker("chain", str(tmp_path), str(tmp_path / "one.pt"))
    r = torchrun(2, "chain", tmp_path, tmp_path / "two.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt")
    assert one["history"][-1]["chains_done"] > 0  # chains ran to the end and were refilled
    r = torchrun(2, "chain", tmp_path, tmp_path / "crash.pt", 1, 6)
    assert r.returncode != 0
    mid = checkpoint.load(tmp_path / "crash.pt.resume")
    assert mid["step"] == 4 and len(mid["carry"]) == 2 and all(c["m"].shape == (4,) for c in mid["carry"])
    r = torchrun(2, "chain", tmp_path, tmp_path / "crash.pt")
    assert r.returncode == 0 and "resuming from" in r.stdout + r.stderr, r.stderr[-3000:]
    assert_same_weights(tmp_path / "two.pt", tmp_path / "crash.pt")


def _results(d):
    """The evaluate stage's details files without what differs between runs (timings, run ids)."""
    import json
    drop = {"seconds", "seconds_per_puzzle", "puzzles_per_second", "sacred_run_id"}

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in drop}
        return [clean(x) for x in v] if isinstance(v, list) else v
    return [clean(json.loads((d / "details" / f).read_text())) for f in ("teacher.json", "tdrm.json")]


def test_evaluate_on_two_ranks_gathers_the_one_process_result(tmp_path, params_raw):
    """Each rank evaluates its rows of every batch (the last batch of 1 puzzle leaves rank 1 none)
    with the noise those rows get in one process; the gathered per-puzzle results give the
    one-process metrics and paired tests, written once by rank 0."""
    import numpy as np
    import yaml
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.board import logits_to_digits, to_tokens
    from tdrm.diffusion.sampling import generate
    from tdrm.train.distill import train_distill
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params(DISTILL), tmp_path / "tr", teacher, tmp_path / "tdrm.pt", progress=False)
    # a tiny model solves nothing, so the test split's "solutions" become the boards the one-process
    # main run samples for the even puzzles (and the true ones elsewhere): scoring 0.5 needs each
    # rank to sample its puzzles with exactly the one-process noise
    model, codec, sched, _ = load_tdrm(tmp_path / "tdrm.pt")
    z = dict(np.load(tmp_path / "test.npz"))
    gen, boards = torch.Generator().manual_seed(tiny_params().common.seed), []
    for i in range(0, len(z["puzzles"]), 33):
        x = generate(model, torch.as_tensor(to_tokens(z["puzzles"][i:i + 33])), sched, sampler="ddim", steps=5,
                     eta=0.0, generator=gen)
        boards.append(logits_to_digits(codec.answer_logits(x)).numpy())
    z["solutions"][::2] = np.concatenate(boards)[::2]
    np.savez_compressed(tmp_path / "test.npz", **z)
    params_raw["profile"] = "tiny"
    params_raw["evaluate"].update(batch_size=33, best_of_eta=0.5)  # 100 test puzzles: 33, 33, 33, 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    worker("evaluate", str(tmp_path), str(tmp_path / "one"))
    r = torchrun(2, "evaluate", tmp_path, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    (t1, d1), (t2, d2) = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert t1 == t2 and t1["n"] == 100
    cos1, cos2 = d1["tdrm"].pop("per_step_cosine_to_teacher"), d2["tdrm"].pop("per_step_cosine_to_teacher")
    assert cos1 == pytest.approx(cos2, rel=1e-5)  # sums over ranks in another order
    assert d1 == d2 and d1["best_of_n"]["eta"] == 0.5 and d1["tdrm"]["exact_accuracy"] == 0.5
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.name.isdigit())
    assert len(runs) == 2  # one Sacred run per launch: rank 1 of the 2-process job recorded nothing
    # best of N at eta 0 takes the main run as its first sample and draws the rest after it, on each rank
    params_raw["evaluate"].update(best_of_eta=0.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    worker("evaluate", str(tmp_path), str(tmp_path / "one0"))
    r = torchrun(2, "evaluate", tmp_path, tmp_path / "two0")
    assert r.returncode == 0, r.stderr[-3000:]
    (_, d1), (_, d2) = _results(tmp_path / "one0"), _results(tmp_path / "two0")
    for d in (d1, d2):
        d["tdrm"].pop("per_step_cosine_to_teacher")
    assert d1 == d2 and d1["best_of_n"]["eta"] == 0.0
    assert d1["best_of_n"]["single_sample_exact_accuracy"] == d1["tdrm"]["exact_accuracy"] == 0.5


def test_traces_on_two_ranks_write_the_one_process_bytes(tmp_path):
    """Each rank records every other shard; rank 0 writes the manifests: every file of the output
    equals the one-process output byte for byte (both at one thread per process)."""
    tiny_traces(tmp_path, 30, 20)
    worker("traces", str(tmp_path), str(tmp_path / "one"))
    r = torchrun(2, "traces", tmp_path, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and len([p for p in one if p.suffix == ".npy"]) == 8 * 9  # 5 + 3 shards x 9 fields
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert not list((tmp_path / "two").rglob("*.done.json"))  # the resume markers are gone


def test_scaling_bench_times_every_stage_at_each_process_count(tmp_path, tiny_params_file, capsys):
    """`python -m tdrm.bench scaling` on the tiny profile: one row per (stage, processes), each from
    a real torchrun launch of the training loop; the first count is the efficiency reference."""
    from tdrm.cli import bench_main
    from tdrm.train.distill import train_distill
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params(DISTILL), tmp_path / "tr", teacher, tmp_path / "tdrm.pt", progress=False)
    rc = bench_main(["scaling", "--params", str(tiny_params_file), "--profile", "tiny", "--procs", "1,2",
                     "--steps", "3", "--data", str(tmp_path), "--traces", str(tmp_path / "tr"),
                     "--teacher", str(tmp_path / "t.pt"), "--tdrm", str(tmp_path / "tdrm.pt"),
                     "--stages", "teacher,distill,rl", "--out", str(tmp_path / "scaling.json")])
    assert rc == 0
    import json
    rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
    assert [(r["stage"], r["processes"]) for r in rows] == [("teacher", 1), ("teacher", 2), ("distill", 1), ("distill", 2),
                                                            ("rl", 1), ("rl", 2)]
    assert [r["backend"] for r in rows] == ["none", "gloo"] * 3
    assert all(rows[i]["efficiency_vs_first"] == 1.0 for i in (0, 2, 4))
    rl = tiny_params().rl
    assert rows[4]["global_batch"] == rl.puzzles * rl.group_size  # rollouts per step
    for r in rows:
        assert r["samples_per_s"] == pytest.approx(r["global_batch"] * 3 / r["seconds"], rel=0.02)
    assert "samples_per_s" in capsys.readouterr().out  # the printed table


def test_rl_on_two_ranks_keeps_groups_whole_steps_together_and_resumes(tmp_path):
    """RL under torchrun: each rank rolls out its half of every global draw of puzzles (whole groups),
    the ranks' weights stay identical (one gradient sum per optimizer step, also when a rank kept no
    group), the reward curve is logged once (rank 0), and a crash resumes at the same world size only."""
    import json

    from ..dist_worker import RL
    from tdrm.train.distill import train_distill
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params(DISTILL), tmp_path / "tr", teacher, tmp_path / "tdrm.pt", progress=False)
    worker("rl", str(tmp_path), str(tmp_path / "one.pt"))
    r = torchrun(2, "rl", tmp_path, tmp_path / "two.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one.pt.rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / f"two.pt.rank{i}.json").read_text()) for i in (0, 1))
    steps, local = RL["rl"]["steps"], RL["rl"]["puzzles"] // 2
    # the first draw is the same global draw in both runs, split in halves; every first round holds 2 puzzles
    assert r0["calls"][0] + r1["calls"][0] == one["calls"][0] and len(r0["calls"][0]) == local
    assert len(r0["rows"]) == steps and r1["rows"] == []  # logged once, by rank 0
    assert [h["step"] for h in r1["history"]] == list(range(1, steps + 1))
    h = r0["history"]
    assert all(row["groups"] >= RL["rl"]["puzzles"] for row in h)  # both ranks' groups counted
    assert all(row["rollout_puzzles"] >= RL["rl"]["puzzles"] for row in h)
    assert len(r1["calls"]) == len(r0["calls"]) + 2  # rank 1's refill rounds at step 2 (rank 0 drew along)
    assert h[1]["rollout_rounds"] == 3 and h[1]["skipped_groups"] >= 2 and h[1]["trained_samples"] > 0
    assert r0["weights"] == r1["weights"]  # in sync: the same summed gradient on both ranks
    start = checkpoint.load(tmp_path / "tdrm.pt")["ema"]
    assert any(r0["weights"][k] != start[k].flatten()[:50].tolist() for k in start)  # and they moved
    two = checkpoint.load(tmp_path / "two.pt")
    assert two["rl"]["history"][-1]["step"] == steps and "val_exact" in two["rl"]["history"][-1]
    # without the drops (they count calls per process): rank 0 (the one that logs) dies at step 3, after
    # the step-2 checkpoint; the job fails, 1 process refuses the resume file, 2 resume to the same weights
    r = torchrun(2, "rl_plain", tmp_path, tmp_path / "plain.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(2, "rl_plain", tmp_path, tmp_path / "crash.pt", 0, 3)
    assert r.returncode != 0
    mid = checkpoint.load(tmp_path / "crash.pt.resume")
    assert mid["step"] == 2 and mid["world_size"] == 2 and len(mid["generator"]) == 2
    with pytest.raises(ValueError, match="written by 2 processes"):
        worker("rl_plain", str(tmp_path), str(tmp_path / "crash.pt"))
    r = torchrun(2, "rl_plain", tmp_path, tmp_path / "crash.pt")
    assert r.returncode == 0 and "resuming from" in r.stdout + r.stderr, r.stderr[-3000:]
    a, b = checkpoint.load(tmp_path / "plain.pt"), checkpoint.load(tmp_path / "crash.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=RTOL, atol=ATOL), k
