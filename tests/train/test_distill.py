"""Distillation mechanics on tiny traces (the accuracy targets are measured by the stage)."""
import pytest
import torch

from tdrm.config import Traces
from tdrm.checkpoint import load_teacher
from tdrm.tracking.base import MemoryTracker
from tdrm.traces.record import record
from tdrm import checkpoint
from tdrm.checkpoint import load_tdrm
from tdrm.diffusion.sampling import generate
from tdrm.train.distill import train_distill

from ..conftest import crash_at, tiny_params, tiny_teacher, tiny_traces

LEARN_STEPS = 300
# the plain distillation (one shared noise level, truth-noised inputs, CE on the last row, no latent
# self-conditioning); the issue-13 switches the shipped params turn on are tested one by one below
DISTILL = {"steps": 120, "batch": 32, "eval_every": 60, "eval_limit": 10, "T": 50, "sample_steps": 5,
           "lr": 1e-3, "warmup": 10, "ckpt_every": 40, "shift": 1.0, "ce_weight": 0.1,
           "self_correct_prob": 0.0, "ce_rows": "last",
           "denoiser": {"hidden": 32, "layers": 2, "heads": 2, "latent_cond": False, "row_causal": False}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    teacher = tiny_traces(d, 60, limit=60)
    return tiny_params({"distill": DISTILL}), d, teacher


def test_denoising_loss_falls_and_checkpoint_samples(setup, tmp_path):
    p, d, teacher = setup
    tr = MemoryTracker()
    res = train_distill(p, d / "tr", teacher, tmp_path / "tdrm.pt", tracker=tr, progress=False, log_every=20)
    mse = [v for _, v in tr.scalars["distill.mse"]]
    assert mse[-1] < 0.7 * mse[0], mse
    val = [v for _, v in tr.scalars["distill.val_exact_ema"]]
    assert res["val_exact_accuracy_ema"] == val[-1] and len(val) == 2  # evaluated at 60 and 120 steps
    model, codec, sched, ck = load_tdrm(tmp_path / "tdrm.pt")
    tokens = torch.randint(1, 6, (3, 16))
    x = generate(model, tokens, sched, sampler="ddpm", steps=5, eta=1.0, generator=torch.Generator().manual_seed(0))
    y = generate(model, tokens, sched, sampler="ddpm", steps=5, eta=1.0, generator=torch.Generator().manual_seed(0))
    z = generate(model, tokens, sched, sampler="ddpm", steps=5, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert x.shape == (3, teacher.cfg.n_sup, 16, teacher.cfg.hidden) and torch.equal(x, y)
    assert not torch.allclose(x, z)  # the sample depends on the generator: determinism is not a constant output
    with pytest.raises(ValueError, match="ddpm samples at eta 1"):
        generate(model, tokens, sched, sampler="ddpm", steps=5, eta=0.5, generator=torch.Generator())
    with pytest.raises(checkpoint.CheckpointError, match="not a TDRM denoiser"):
        load_tdrm(d / "t.pt")


def test_distill_resume_gives_identical_weights(setup, tmp_path):
    p, d, teacher = setup
    p = tiny_params({"distill": {**DISTILL, "eval_every": 0}})
    train_distill(p, d / "tr", teacher, tmp_path / "a.pt", resume_path=tmp_path / "ra.pt", progress=False, log_every=20)
    with pytest.raises(KeyboardInterrupt):
        train_distill(p, d / "tr", teacher, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", tracker=crash_at(100),
                      progress=False, log_every=20)
    assert checkpoint.load(tmp_path / "rb.pt")["step"] == 80
    train_distill(p, d / "tr", teacher, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", progress=False, log_every=20)
    a, b = checkpoint.load(tmp_path / "a.pt"), checkpoint.load(tmp_path / "b.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_cli_eval_accepts_tdrm_checkpoints(setup, tmp_path, capsys):
    import json

    from tdrm.cli import main
    from tdrm.data.dataset import load_split
    from tdrm.data.loaders import write_csv
    p, d, teacher = setup
    train_distill(p, d / "tr", teacher, tmp_path / "tdrm.pt", progress=False)
    write_csv(tmp_path / "val.csv", load_split(d, "val"))
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "tdrm.pt"), "--puzzles", str(tmp_path / "val.csv"),
                 "--steps", "4", "--samples", "2", "--sampler", "ddim", "--eta", "0.5", "--seed", "3",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 30 and res["steps"] == 4 and res["samples"] == 2 and res["network_evals_per_puzzle_max"] == 8
    assert 4 <= res["network_evals_per_puzzle"] <= 8  # a second chain only where the first board is not valid
    assert len(res["per_step_exact_accuracy_first_sample"]) == teacher.cfg.n_sup
    assert "valid fraction" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_distillation_learns_to_solve_4x4(tmp_path):
    """A small denoiser distilled from a good 4x4 teacher really solves held-out puzzles."""
    from tdrm.data.dataset import load_split
    from tdrm.eval.tdrm import evaluate_tdrm
    tiny_teacher(tmp_path, 400)
    teacher, _ = load_teacher(tmp_path / "t.pt")
    record(teacher, tmp_path / "t.pt", tmp_path, tmp_path / "tr", Traces(limit=500, shard_size=256, num_aug=1), 0,
           "cpu", progress=False)
    p = tiny_params({"distill": {"steps": LEARN_STEPS, "batch": 32, "eval_every": 0, "T": 50, "lr": 2e-3,
                                 "warmup": 20, "sample_steps": 10, "shift": 4.0, "self_correct_prob": 0.0,
                                 "ce_rows": "last",
                                 "denoiser": {"hidden": 32, "layers": 4, "heads": 2}}})
    train_distill(p, tmp_path / "tr", teacher, tmp_path / "tdrm.pt", progress=False)
    model, codec, sched, ck = load_tdrm(tmp_path / "tdrm.pt")
    test = load_split(tmp_path, "test")
    res = evaluate_tdrm(model, codec, sched, test, sampler="ddim", steps=10, eta=0.0, samples=1, seed=0)
    assert res["exact_accuracy"] >= 0.8, res["exact_accuracy"]  # chance is far below 1%


@pytest.mark.parametrize("state,inner", [("z", True), ("yz", False)])
def test_dynamics_term_and_z_only_state_train_and_evaluate(setup, tmp_path, state, inner):
    """State z (y recomputed by the teacher) and the dynamics-consistency term, end to end."""
    from tdrm.data.dataset import load_split
    from tdrm.eval.tdrm import evaluate_tdrm
    _, d, teacher = setup
    record(teacher, d / "t.pt", d, tmp_path / "tr", Traces(limit=20, shard_size=16, num_aug=1, prefix=True,
                                                           inner=inner), 0, "cpu", progress=False)
    p = tiny_params({"distill": {**DISTILL, "steps": 20, "eval_every": 20, "state": state, "dynamics_weight": 0.5}})
    tr = MemoryTracker()
    train_distill(p, tmp_path / "tr", teacher, tmp_path / "tdrm.pt", tracker=tr, progress=False, log_every=10)
    dyn = [v for _, v in tr.scalars["distill.dynamics"]]
    assert len(dyn) == 2 and all(v > 0 for v in dyn)
    model, codec, sched, ck = load_tdrm(tmp_path / "tdrm.pt")
    rows = teacher.cfg.n_sup * (teacher.cfg.T if state == "z" else 1)
    assert (model.K, model.L, model.P) == (rows, 17, 1) and codec.layout.state == state
    res = evaluate_tdrm(model, codec, sched, load_split(d, "val"), sampler="ddim", steps=3, eta=0.0, samples=1, seed=0)
    assert len(res["per_step_exact_accuracy_first_sample"]) == teacher.cfg.n_sup and res["n"] == 30


def test_distill_refuses_settings_it_cannot_compute(setup, tmp_path):
    _, d, teacher = setup  # traces of step ends at the cells only
    for over, msg in [({"state": "y", "dynamics_weight": 1.0}, "needs z"),
                      ({"state": "yz", "dynamics_weight": 1.0}, "traces.prefix: true"),
                      ({"state": "z"}, "traces.inner: true")]:
        with pytest.raises(ValueError, match=msg):
            train_distill(tiny_params({"distill": {**DISTILL, **over}}), d / "tr", teacher, tmp_path / "x.pt",
                          progress=False)


ARMS = [{"row_noise": "rolling", "row_lag": 1.0, "spacing": 1.0}, {"row_noise": "independent", "row_lag": 0.5, "spacing": 1.0},
        {"ce_rows": "all"}, {"self_correct_prob": 1.0}, {"denoiser": {**DISTILL["denoiser"], "recur": 2}},
        {"spacing": 0.7},
        {"row_noise": "rolling", "row_lag": 0.5, "ce_rows": "all", "self_correct_prob": 0.5, "spacing": 1.0},
        {"self_correct_prob": 0.5, "chain_prob": 0.3,
         "denoiser": {**DISTILL["denoiser"], "self_cond": True, "latent_cond": True}},
        {"row_noise": "cells", "cell_window": 0.3, "ce_rows": "all", "self_correct_prob": 0.5, "spacing": 1.0,
         "denoiser": {**DISTILL["denoiser"], "self_cond": True, "latent_cond": True}},
        {"ce_rows": "all", "self_correct_prob": 0.5,
         "denoiser": {**DISTILL["denoiser"], "self_cond": True, "latent_cond": True, "row_causal": True}},
        {"ce_rows": "all", "ce_error_weight": 10.0, "self_correct_prob": 0.5}]


def _arm_id(arm: dict) -> str:
    """The arm's keys, the denoiser's where they differ from the tiny test's."""
    den = arm.get("denoiser", {})
    return "+".join([f"{k}={v}" for k, v in arm.items() if k != "denoiser"] +
                    [f"{k}={v}" for k, v in den.items() if DISTILL["denoiser"].get(k) != v])


@pytest.mark.parametrize("arm", ARMS, ids=_arm_id)
def test_every_issue13_switch_trains_checkpoints_and_evaluates(setup, tmp_path, arm):
    """Each arm of issue 13 end to end on the tiny profile: training lowers the loss, the
    checkpoint reloads with its sampling schedule and `tdrm eval`'s evaluation runs."""
    from tdrm.data.dataset import load_split
    from tdrm.eval.tdrm import evaluate_tdrm
    p, d, teacher = setup
    over = {"distill": {**DISTILL, "steps": 60, "eval_every": 60, **arm}}
    p = tiny_params(over)
    tr = MemoryTracker()
    train_distill(p, d / "tr", teacher, tmp_path / "tdrm.pt", tracker=tr, progress=False, log_every=20)
    mse = [v for _, v in tr.scalars["distill.mse"]]
    assert mse[-1] < mse[0], mse
    model, codec, sched, ck = load_tdrm(tmp_path / "tdrm.pt")
    rolling = arm.get("row_noise", "shared") in ("rolling", "independent")
    assert model.row_lag == (arm["row_lag"] if rolling else None)
    assert model.cell_window == (arm["cell_window"] if arm.get("row_noise") == "cells" else None)
    assert model.cfg.recur == arm.get("denoiser", {}).get("recur", 1)
    assert model.cfg.latent_cond == arm.get("denoiser", {}).get("latent_cond", False)
    assert model.cfg.row_causal == arm.get("denoiser", {}).get("row_causal", False)
    assert sched.spacing == arm.get("spacing", p.distill.spacing)  # the sampler's time spacing travels with the checkpoint
    res = evaluate_tdrm(model, codec, sched, load_split(d, "val"), sampler="ddim", steps=6, eta=0.0, samples=1, seed=0)
    assert res["n"] == 30 and len(res["per_step_exact_accuracy_first_sample"]) == teacher.cfg.n_sup
    if arm.get("row_noise", "shared") != "shared":  # RL on the per-row / per-cell chain, its own form of levels
        from tdrm.rl.train import train_rl
        est = "grpo" if arm["row_noise"] == "cells" else "awm"
        rl = {"steps": 2, "eval_every": 2, "estimator": est, "puzzles": 4, "group_size": 4}
        with pytest.raises(ValueError, match="rl.sde_window"):
            train_rl(tiny_params({**over, "rl": {**rl, "sde_window": [0, 1]}}), tmp_path / "tdrm.pt", d,
                     tmp_path / "x.pt", progress=False)
        res = train_rl(tiny_params({**over, "rl": rl}), tmp_path / "tdrm.pt", d, tmp_path / "rl.pt",
                       progress=False)
        assert res["steps"] == 2 and "val_exact" in res["history"][-1]
        trained = load_tdrm(tmp_path / "rl.pt")[0]
        assert (trained.row_lag, trained.cell_window) == (model.row_lag, model.cell_window)
        assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), model.state_dict().values()))
        # re-noise in each rollout's cell order, the order drawn around the confidence order (exploration)
        order = {**rl, "estimator": "awm", "renoise_order": "rollout", "order_temperature": 0.5}
        if arm["row_noise"] == "cells":
            res = train_rl(tiny_params({**over, "rl": order}), tmp_path / "tdrm.pt", d, tmp_path / "rl2.pt",
                           progress=False)
            assert res["steps"] == 2 and all(row["trained_samples"] > 0 for row in res["history"])
        else:
            with pytest.raises(ValueError, match="rl.renoise_order rollout"):
                train_rl(tiny_params({**over, "rl": order}), tmp_path / "tdrm.pt", d, tmp_path / "x.pt",
                         progress=False)
            with pytest.raises(ValueError, match="rl.order_temperature draws"):
                train_rl(tiny_params({**over, "rl": {**rl, "estimator": "awm", "order_temperature": 0.5}}),
                         tmp_path / "tdrm.pt", d, tmp_path / "x.pt", progress=False)


def test_error_correcting_batches_are_built_from_detached_predictions(setup, monkeypatch):
    """With self_correct_prob 1 the denoised input is the deterministic reverse step from the
    model's own estimate one round noisier (made without autograd), and that estimate is the
    self-conditioning input; the loss still targets the true trajectory."""
    import tdrm.train.distill as distill
    from tdrm.models.denoiser import Denoiser
    p, d, teacher = setup
    p = tiny_params({"distill": {**DISTILL, "steps": 2, "eval_every": 0, "self_correct_prob": 1.0,
                                 "denoiser": {**DISTILL["denoiser"], "self_cond": True}}})
    seen = []
    real = distill.self_correct_input

    def spy(schedule, x_hi, x0_hi, t_hi, t):
        out = real(schedule, x_hi, x0_hi, t_hi, t)
        seen.append((x0_hi, t_hi, t, x_hi, out))
        return out
    monkeypatch.setattr(distill, "self_correct_input", spy)
    calls = []
    orig = Denoiser.forward

    def fwd(self, x_t, t, puzzle, x0_prev=None):
        calls.append((torch.is_grad_enabled(), x_t, x0_prev))
        return orig(self, x_t, t, puzzle, x0_prev)
    monkeypatch.setattr(Denoiser, "forward", fwd)
    train_distill(p, d / "tr", teacher, d / "sc.pt", progress=False)
    assert len(seen) == 2 and len(calls) == 4
    for i, (x0_hi, t_hi, t, x_hi, x_in) in enumerate(seen):
        first, second = calls[2 * i], calls[2 * i + 1]
        assert not first[0] and first[2] is None and not x0_hi.requires_grad  # the estimate: no autograd
        assert second[0] and second[1] is x_in and second[2] is x0_hi  # trained on it, self-conditioned on it
        assert (t_hi >= t).all() and (t_hi > t).any()
        moved = t_hi > t
        assert not torch.allclose(x_in[moved], x_hi[moved])


def test_issue13_switches_refuse_bad_values(setup, tmp_path):
    _, d, teacher = setup
    for over, msg in [({"row_noise": "diagonal"}, "row_noise"), ({"row_noise": "rolling", "row_lag": 2.0}, "row_lag"),
                      ({"ce_rows": "some"}, "ce_rows"), ({"self_correct_prob": 1.5}, "self_correct_prob"),
                      ({"row_noise": "cells", "cell_window": 0.0}, "cell_window"),
                      ({"row_noise": "cells", "chain_prob": 0.5}, "needs row_noise shared"),
                      ({"spacing": 0.0}, "distill.spacing must be > 0"),
                      ({"row_noise": "cells", "spacing": 0.5}, "samples on its own schedule"),
                      ({"ce_error_weight": 5.0}, "it needs distill.ce_rows all"),
                      ({"ce_rows": "all", "ce_error_weight": -1.0}, "ce_error_weight must be > 0")]:
        with pytest.raises(ValueError, match=msg):
            train_distill(tiny_params({"distill": {**DISTILL, **over}}), d / "tr", teacher, tmp_path / "x.pt",
                          progress=False)


def test_bench_tdrm_table_pairs_checkpoints_with_their_teacher(setup, tmp_path, capsys):
    """`python -m tdrm.bench tdrm`: one row for the teacher, one per checkpoint, with the chain
    diagnosis and paired tests; the rolling-schedule checkpoint makes as many calls as asked."""
    from tdrm.cli import bench_main
    p, d, teacher = setup
    for name, arm in (("a", {}), ("b", {"row_noise": "rolling", "row_lag": 1.0, "spacing": 1.0})):
        train_distill(tiny_params({"distill": {**DISTILL, "steps": 10, "eval_every": 0, **arm}}), d / "tr", teacher,
                      tmp_path / f"{name}.pt", progress=False)
    out = tmp_path / "b.json"
    assert bench_main(["tdrm", "--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "b.pt"),
                       "--data", str(d), "--split", "val", "--steps", "6", "--out", str(out)]) == 0
    import json
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert rows[1]["calls"] == 6 and rows[2]["calls"] == 6 and "vs_first" in rows[2]
    assert len(rows[2]["by_row"].split()) == teacher.cfg.n_sup and len(rows[2]["by_call"].split()) == 6
    assert 0 < rows[1]["cells"] < 1 and "chain_prob=0.0" in rows[1]["arms"]  # tiny models fill some cells
    assert "| model" in capsys.readouterr().out


@pytest.mark.parametrize("init", ["random", "teacher"])
def test_move_denoiser_trains_reloads_and_evaluates(setup, tmp_path, init):
    """denoiser.arch move (row k = a TRM step from row k-1) end to end on the tiny profile: the
    loss falls, the checkpoint reloads with the trained weights (not the teacher's) and evaluates."""
    from tdrm.data.dataset import load_split
    from tdrm.eval.tdrm import evaluate_tdrm
    _, d, teacher = setup
    record(teacher, d / "t.pt", d, tmp_path / "tr", Traces(limit=40, shard_size=32, num_aug=1, prefix=True), 0,
           "cpu", progress=False)
    den = {"hidden": teacher.cfg.hidden, "self_cond": True, "arch": "move", "init": init, "init_seed": 1,
           "latent_cond": False, "row_causal": False}
    p = tiny_params({"distill": {**DISTILL, "steps": 40, "eval_every": 40, "state": "yz", "denoiser": den}})
    tr = MemoryTracker()
    train_distill(p, tmp_path / "tr", teacher, tmp_path / "tdrm.pt", tracker=tr, progress=False, log_every=10)
    mse = [v for _, v in tr.scalars["distill.mse"]]
    if init == "random":  # (from the teacher's weights, lr 1e-3 first moves away from them: no claim)
        assert mse[-1] < mse[0], mse
    model, codec, sched, ck = load_tdrm(tmp_path / "tdrm.pt", ema=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    assert (model.K, model.L, model.P) == (teacher.cfg.n_sup, 17, 1)
    res = evaluate_tdrm(model, codec, sched, load_split(d, "val"), sampler="ddim", steps=4, eta=0.0, samples=1, seed=0)
    assert res["n"] == 30 and len(res["per_step_exact_accuracy_first_sample"]) == teacher.cfg.n_sup


def test_bench_row_lag_resamples_independent_level_checkpoints_only(setup, tmp_path):
    """`python -m tdrm.bench tdrm --row-lag L`: a checkpoint trained with independent per-row levels
    samples on the rolling schedule of L (recorded in its row; at lag 0 it makes the asked calls
    with every row at one level, at lag 1 row by row), a shared-level checkpoint beside it as it was
    trained; with no independent-level checkpoint, or L outside [0, 1], the bench refuses."""
    import json

    from tdrm.cli import bench_main
    p, d, teacher = setup
    for name, arm in (("a", {}), ("c", {"row_noise": "independent", "row_lag": 1.0, "spacing": 1.0})):
        train_distill(tiny_params({"distill": {**DISTILL, "steps": 10, "eval_every": 0, **arm}}), d / "tr", teacher,
                      tmp_path / f"{name}.pt", progress=False)
    by_lag = {}
    for lag in ("0", "1"):
        out = tmp_path / f"lag{lag}.json"
        assert bench_main(["tdrm", "--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "c.pt"),
                           "--data", str(d), "--split", "val", "--steps", "8", "--row-lag", lag, "--limit", "12",
                           "--out", str(out)]) == 0
        rows = json.loads(out.read_text())["rows"]
        assert "sample_lag=None" in rows[1]["arms"] and f"sample_lag={float(lag)}" in rows[2]["arms"]
        assert rows[2]["calls"] == 8
        by_lag[lag] = rows
    assert by_lag["0"][1] == {**by_lag["1"][1], "seconds": by_lag["0"][1]["seconds"]}  # the shared model: unchanged
    pick = ("cells", "changed_after_early", "early_fixed")
    assert [by_lag["0"][2][k] for k in pick] != [by_lag["1"][2][k] for k in pick]  # another schedule, another chain
    with pytest.raises(ValueError, match="no checkpoint was trained with distill.row_noise independent"):
        bench_main(["tdrm", "--checkpoint", str(tmp_path / "a.pt"), "--data", str(d), "--split", "val",
                    "--row-lag", "0.5"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bench_main(["tdrm", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(d), "--split", "val",
                    "--row-lag", "2"])


def test_independent_levels_with_shared_prob_train_end_to_end(setup, tmp_path):
    """row_noise independent with `shared_prob` 0.5 on the tiny profile: trains (the loss falls),
    records the switch, and reloads as a per-row model that samples on its rolling schedule."""
    _, d, teacher = setup
    arm = {"row_noise": "independent", "row_lag": 1.0, "spacing": 1.0, "shared_prob": 0.5}
    p = tiny_params({"distill": {**DISTILL, "steps": 40, "eval_every": 0, **arm}})
    tr = MemoryTracker()
    train_distill(p, d / "tr", teacher, tmp_path / "m.pt", tracker=tr, progress=False, log_every=10)
    mse = [v for _, v in tr.scalars["distill.mse"]]
    assert len(mse) == 4 and mse[-1] < mse[0], mse
    model, codec, sched, ck = load_tdrm(tmp_path / "m.pt")
    assert ck["config"]["distill"]["shared_prob"] == 0.5 and model.row_lag == 1.0
    x = generate(model, torch.randint(1, 5, (3, model.L)), sched, sampler="ddim", steps=6, eta=0.0,
                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, model.K, model.L, model.C) and torch.isfinite(x).all()
