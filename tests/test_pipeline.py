import pytest
"""Stage smoke tests on the tiny profile: the stage scripts, Sacred records, determinism."""
import json
import os
import subprocess
import sys
from pathlib import Path


from tdrm.pipeline import data_stage, evaluate_stage, teacher_stage

from .conftest import ROOT

VOLATILE = {"seconds", "puzzles_per_second", "minutes", "train_minutes", "sacred_run_id"}


def _run_pipeline(params, out: Path):
    data_stage(str(params), str(out / "data"), str(out / "m_data.json"))
    teacher_stage(str(params), str(out / "data"), str(out / "teacher.pt"), str(out / "m_train.json"),
                  str(out / "train.csv"), resume_dir=str(out / "ck"))
    evaluate_stage(str(params), str(out / "data"), str(out / "teacher.pt"), str(out / "m_eval.json"),
                   str(out / "steps.csv"))
    return [json.loads((out / f).read_text()) for f in ("m_data.json", "m_train.json", "m_eval.json",
                                                        "details/m_eval.json")]


def test_pipeline_twice_same_seed_same_metrics_and_sacred_records(tiny_params_file, tmp_path):
    a = _run_pipeline(tiny_params_file, tmp_path / "a")
    b = _run_pipeline(tiny_params_file, tmp_path / "b")
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in VOLATILE} == {k: v for k, v in y.items() if k not in VOLATILE}
    head, ev = a[2], a[3]
    r4 = lambda v: float(f"{v:.4g}")  # noqa: E731
    assert head == {"n": 100, "exact": ev["exact_accuracy"], "ci_low": r4(ev["ci95"][0]), "ci_high": r4(ev["ci95"][1]),
                    "cell": r4(ev["cell_accuracy"]), "seconds": r4(ev["seconds"]),
                    "train_minutes": r4(ev["train_minutes"]), "sacred_run_id": ev["sacred_run_id"]}
    assert {"exact_accuracy", "cell_accuracy", "n", "ci95", "seconds", "per_step_exact_accuracy",
            "by_rating", "sacred_run_id"} <= set(ev)
    assert len(ev["per_step_exact_accuracy"]) == 3 and ev["n"] == 100
    # Sacred FileStorage: one directory per stage run, completed, with config, metrics, artifact
    runs = Path(os.environ["TDRM_RUNS_DIR"])
    run_dir = runs / str(ev["sacred_run_id"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "COMPLETED" and run["experiment"]["name"] == "tdrm.evaluate"
    assert "m_eval.json" in run["artifacts"] and len(run["artifacts"]) == 2  # headline and details
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["profile"] == "tiny"
    train_run = runs / str(a[1]["sacred_run_id"])
    metrics = json.loads((train_run / "metrics.json").read_text())
    assert "train.lm_loss" in metrics and len(metrics["train.lm_loss"]["values"]) >= 1
    assert len([p for p in runs.iterdir() if p.name.isdigit()]) == 6


@pytest.mark.slow
def test_stage_scripts_take_paths_from_argv(tiny_params_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    def run(*args):
        subprocess.run([sys.executable, str(ROOT / "stages" / args[0]), str(tiny_params_file), *args[1:]],
                       cwd=tmp_path, env=env, check=True, capture_output=True)
    run("data.py", "d", "m/data.json")
    run("teacher.py", "d", "t.pt", "m/train.json", "p/train.csv")
    run("evaluate.py", "d", "t.pt", "m/eval.json", "p/steps.csv")
    run("traces.py", "d", "t.pt", "tr", "m/traces.json")
    tm = json.loads((tmp_path / "m/traces.json").read_text())
    assert tm["train_puzzles"] == 40 and tm["val_puzzles"] == 20 and tm["bytes_per_puzzle"] > 0
    assert json.loads((tmp_path / "m/eval.json").read_text())["n"] == 100
    assert (tmp_path / "p/steps.csv").read_text().startswith("step,exact_accuracy")


def test_unreachable_mongo_falls_back_to_filestorage(tiny_params_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDRM_MONGO_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500")
    m = data_stage(str(tiny_params_file), str(tmp_path / "d"), str(tmp_path / "m.json"))
    assert "unreachable" in capsys.readouterr().err
    assert (Path(os.environ["TDRM_RUNS_DIR"]) / str(m["sacred_run_id"]) / "run.json").exists()


def test_runs_dir_resolves_to_repo_under_dvc_temp_exps(tmp_path, monkeypatch):
    from tdrm.paths import project_root
    from tdrm.tracking.sacred_run import runs_dir
    tmp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    tmp.mkdir(parents=True)
    assert project_root(tmp) == tmp_path / "repo"
    monkeypatch.delenv("TDRM_RUNS_DIR")
    monkeypatch.chdir(tmp)
    assert runs_dir() == tmp_path / "repo" / "runs"


def test_headline_picks_dotted_paths_and_skips_absent_ones():
    from tdrm.pipeline.common import headline
    m = {"n": 10, "tdrm": {"exact_accuracy": 0.5, "ci95": [0.2345678, 0.8], "p": 3.80296905e-11}, "rows": [{"a": 1}]}
    spec = {"n": "n", "exact": "tdrm.exact_accuracy", "ci_low": "tdrm.ci95.0", "ci_high": "tdrm.ci95.1",
            "p_value": "tdrm.p", "control": "control.exact_accuracy", "bad_index": "tdrm.ci95.5"}
    assert headline(m, spec) == {"n": 10, "exact": 0.5, "ci_low": 0.2346, "ci_high": 0.8, "p_value": 3.803e-11}
