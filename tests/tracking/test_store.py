"""Reading Sacred runs back (tdrm.tracking.store) and the `tdrm runs` commands over FileStorage."""
import json
import struct
from datetime import datetime

import pytest

from tdrm.cli import main
from tdrm.tracking.store import (RECORD_KEYS, FileRuns, RunNotFound, final_metrics, flatten, list_runs,
                                 varying_keys)


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_flatten_final_metrics_and_varying_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    series = {"loss": ([1, 2, 3], [3.0, 2.0, 1.5]), "empty": ([], [])}
    got = final_metrics({"acc": 0.5, "ci": [0, 1], "ok": True, "sub": {"n": 10}, "loss": 9.9}, series)
    assert got == {"loss": 1.5, "acc": 0.5, "sub.n": 10}  # the series' last value wins over the result's
    recs = [{"params": {"lr": 1, "seed": 0}}, {"params": {"lr": 2, "seed": 0}}, {"params": {"seed": 0, "x": 1}}]
    assert varying_keys(recs) == ["lr", "x"]


def test_records_of_completed_failed_interrupted_and_dead_runs(runs_fixture):
    d, ids = runs_fixture
    recs = {r["id"]: r for r in list_runs(FileRuns(d))}
    assert set(recs) == set(ids.values())
    status = {name: recs[i]["status"] for name, i in ids.items()}
    assert status == {"base": "COMPLETED", "exp": "COMPLETED", "failed": "FAILED", "interrupted": "INTERRUPTED",
                      "dead": "DIED"}
    base, exp = recs[ids["base"]], recs[ids["exp"]]
    assert tuple(base) == RECORD_KEYS
    assert base["stage"] == "teacher" and recs[ids["failed"]]["stage"] == "distill"
    assert base["params"]["teacher.lr"] == 1e-3 and exp["params"]["teacher.lr"] == 2e-3
    assert base["metrics"]["train.lm_loss"] == pytest.approx(2.0 / 4 + 1e-3)  # last point of the series
    assert base["metrics"]["exact_accuracy"] == pytest.approx(0.4) and base["metrics"]["nested.cell_accuracy"] == 0.9
    assert exp["dvc_exp"] == "exp-lr" and exp["dvc_baseline"] == "abc123" and base["dvc_exp"] is None
    assert base["run_uid"] != exp["run_uid"] and len(base["run_uid"]) == 32
    assert base["duration_s"] >= 0 and base["host"]
    assert recs[ids["dead"]]["duration_s"] == 3600.0  # start to last heartbeat
    # still RUNNING when the heartbeat is fresh
    assert FileRuns(d).load(ids["dead"], now=datetime(2026, 1, 1, 1, 5)).record["status"] == "RUNNING"
    assert [r["id"] for r in list_runs(FileRuns(d), stage="distill")] == [ids["failed"], ids["interrupted"]]
    assert [r["id"] for r in list_runs(FileRuns(d), status="failed")] == [ids["failed"]]
    with pytest.raises(RunNotFound, match="no run '999'"):
        FileRuns(d).load("999")
    with pytest.raises(FileNotFoundError, match="TDRM_RUNS_DIR"):
        FileRuns(d / "nowhere")


def test_list_json_schema_and_table(runs_fixture, capsys):
    d, ids = runs_fixture
    assert main(["runs", "list", "--dir", str(d), "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 5
    types = {"id": str, "source": str, "stage": str, "status": str, "start": str, "host": str, "run_uid": str,
             "params": dict, "metrics": dict}
    for r in recs:
        assert list(r) == list(RECORD_KEYS)
        for k, t in types.items():
            assert isinstance(r[k], t), (k, r[k])
        assert r["duration_s"] is None or isinstance(r["duration_s"], float)
        assert r["stop"] is None or isinstance(r["stop"], str)
        assert all(isinstance(v, (int, float)) for v in r["metrics"].values())
    assert main(["runs", "list", "--dir", str(d), "--stage", "teacher"]) == 0
    out = capsys.readouterr().out
    assert "exp-lr" in out and "lr=0.002" in out and "distill" not in out  # lr differs between the two
    assert main(["runs", "list", "--dir", str(d), "--status", "DIED"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # header, rule, the dead run


def test_show_and_a_missing_run(runs_fixture, capsys):
    d, ids = runs_fixture
    assert main(["runs", "show", ids["exp"], "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    for want in ("exp-lr", "teacher.lr", "0.002", "train.exact_acc", "6 points"):
        assert want in out
    assert main(["runs", "show", ids["exp"], "--dir", str(d), "--format", "json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["series"]["train.lm_loss"]["steps"] == [1, 2, 3, 4, 5, 6]
    assert main(["runs", "show", "999", "--dir", str(d)]) == 2
    assert "no run '999'" in capsys.readouterr().err


def test_compare_config_differences_metrics_and_curves(runs_fixture, capsys, tmp_path):
    d, ids = runs_fixture
    png = tmp_path / "cmp.png"
    assert main(["runs", "compare", ids["base"], ids["exp"], "--dir", str(d), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    diff = out.split("config differences")[1].split("final metrics")[0]
    assert "teacher.lr" in diff and "teacher.steps" in diff and "profile" not in diff  # only what differs
    assert "(2; " in diff
    row = next(line for line in out.splitlines() if line.startswith("exact_accuracy"))
    assert row.split()[1:] == ["0.4", "0.6"]
    assert png_size(png) == (900, 320)  # two shared series, 4.5 x 3.2 inches per panel at 100 dpi
    one = tmp_path / "one.png"
    assert main(["runs", "compare", ids["base"], ids["exp"], ids["failed"], "--dir", str(d),
                 "--metric", "train.lm_loss", "--png", str(one)]) == 0
    assert png_size(one) == (450, 320)
    assert main(["runs", "compare", ids["base"], ids["failed"], "--dir", str(d), "--png", str(tmp_path / "x.png")]) == 2
    assert "share no metric series" in capsys.readouterr().err


def test_an_artifact_named_like_a_run_file_is_kept_beside_it(tmp_path, monkeypatch):
    """A stage whose metrics path is `metrics.json` (or another of Sacred's own file names) keeps
    its artifact as artifact_<name>, and the run's own metrics.json and run.json stay Sacred's."""
    from tdrm.tracking.sacred_run import artifact_name, tracked_run
    monkeypatch.setenv("TDRM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("TDRM_MONGO_URL", raising=False)
    mine = tmp_path / "out" / "metrics.json"
    mine.parent.mkdir()
    mine.write_text('{"exact_accuracy": 0.5}')
    other = tmp_path / "out" / "teacher.json"
    other.write_text("{}")

    def fn(tracker):
        tracker.log_scalar("train.loss", 1.0, 1)
        tracker.add_artifact(str(mine))
        tracker.add_artifact(str(other))
        return {"exact_accuracy": 0.5}
    tracked_run("teacher", {"teacher": {"lr": 0.5}}, fn, seed=0)
    (run,) = [d for d in (tmp_path / "runs").iterdir() if d.name != "_sources"]
    assert json.loads((run / "artifact_metrics.json").read_text()) == {"exact_accuracy": 0.5}
    assert "train.loss" in json.loads((run / "metrics.json").read_text())  # Sacred's own, not overwritten
    raw = json.loads((run / "run.json").read_text())
    assert raw["status"] == "COMPLETED" and sorted(raw["artifacts"]) == ["artifact_metrics.json", "teacher.json"]
    assert artifact_name("a/run.json") == "artifact_run.json" and artifact_name("a/x.json", "cout.txt") == "artifact_cout.txt"
