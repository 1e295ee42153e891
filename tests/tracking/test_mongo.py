"""The MongoDB path: the live MongoObserver, `tdrm runs` reading MongoDB, `tdrm runs sync`
(idempotent), against the wire-protocol server nx-27017 (skipped without it), and the fallback to
FileStorage when the server is unreachable."""
import json

import pytest

from tdrm.cli import main
from tdrm.tracking.sacred_run import tracked_run
from tdrm.tracking.store import FileRuns, MongoRuns, list_runs

from .conftest import make_runs


def _comparable(recs):
    return sorted((r["run_uid"], r["stage"], r["status"], json.dumps(r["params"], sort_keys=True),
                   json.dumps(r["metrics"], sort_keys=True)) for r in recs)


def test_live_observer_then_sync_is_idempotent(wire_mongo, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("TDRM_RUNS_DIR", str(runs))
    monkeypatch.setenv("TDRM_MONGO_URL", wire_mongo)
    monkeypatch.setenv("TDRM_MONGO_DB", "tdrm_test")

    def fn(tracker):
        for s in (1, 2, 3):
            tracker.log_scalar("train.loss", 1.0 / s, s)
        return {"exact_accuracy": 0.75}

    tracked_run("teacher", {"teacher": {"lr": 0.5}}, fn, seed=0)  # recorded by both observers
    mongo = MongoRuns(wire_mongo, "tdrm_test")
    (live,) = list_runs(mongo)
    (filed,) = list_runs(FileRuns(runs))
    assert live["source"] == "mongo" and live["run_uid"] == filed["run_uid"]
    assert live["metrics"]["train.loss"] == pytest.approx(1 / 3) and live["metrics"]["exact_accuracy"] == 0.75
    assert live["params"] == filed["params"] and live["status"] == "COMPLETED"

    monkeypatch.delenv("TDRM_MONGO_URL")
    make_runs(runs)  # five more runs in FileStorage only (failed, interrupted, dead among them)
    assert len(FileRuns(runs).ids()) == 6
    assert main(["runs", "sync", "--mongo", wire_mongo, "--mongo-db", "tdrm_test", "--dir", str(runs)]) == 0
    assert "copied 5 runs, 1 already in MongoDB" in capsys.readouterr().out
    assert main(["runs", "sync", "--mongo", wire_mongo, "--mongo-db", "tdrm_test", "--dir", str(runs)]) == 0
    assert "copied 0 runs, 6 already in MongoDB" in capsys.readouterr().out
    assert _comparable(list_runs(mongo)) == _comparable(list_runs(FileRuns(runs)))

    assert main(["runs", "list", "--mongo", wire_mongo, "--mongo-db", "tdrm_test", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in recs} == {"COMPLETED", "FAILED", "INTERRUPTED", "DIED"}
    assert {r["source"] for r in recs} == {"mongo"}
    exp = next(r for r in recs if r["dvc_exp"] == "exp-lr")
    assert main(["runs", "show", exp["id"], "--mongo", wire_mongo, "--mongo-db", "tdrm_test"]) == 0
    assert "train.exact_acc" in capsys.readouterr().out


@pytest.mark.slow
def test_unreachable_mongo_falls_back_to_file_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDRM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TDRM_MONGO_URL", "mongodb://127.0.0.1:9")  # the discard port: nothing listens
    res = tracked_run("teacher", {"teacher": {"lr": 0.5}}, lambda tracker: {"exact_accuracy": 1.0}, seed=0)
    assert res["exact_accuracy"] == 1.0
    err = capsys.readouterr().err
    assert "mongodb://127.0.0.1:9 is unreachable" in err and "recording to FileStorage only" in err
    (rec,) = list_runs(FileRuns(tmp_path / "runs"))
    assert rec["status"] == "COMPLETED" and rec["metrics"]["exact_accuracy"] == 1.0
    assert main(["runs", "list"]) == 2  # reading: TDRM_MONGO_URL is set, so it says why it cannot
    assert "unreachable" in capsys.readouterr().err
    monkeypatch.delenv("TDRM_MONGO_URL")
    with pytest.raises(ValueError, match="needs a MongoDB"):
        from tdrm.cli import build_parser, cmd_runs_sync
        cmd_runs_sync(build_parser().parse_args(["runs", "sync"]))


@pytest.mark.slow
def test_no_credential_is_printed_or_recorded(tmp_path, monkeypatch, capsys):
    """An unreachable URL with user and password: messages and the Sacred run show the user and
    *** for the password, never the password itself."""
    from tdrm.tracking.base import mask_url
    secret = "pa55-w0rd"
    url = f"mongodb://alice:{secret}@127.0.0.1:9/tdrm?authSource=admin"
    assert mask_url(url) == "mongodb://alice:***@127.0.0.1:9/tdrm?authSource=admin"
    assert mask_url("mongodb://127.0.0.1:9") == "mongodb://127.0.0.1:9"
    monkeypatch.setenv("TDRM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TDRM_MONGO_URL", url)
    tracked_run("teacher", {"teacher": {"lr": 0.5}}, lambda tracker: {"exact_accuracy": 1.0}, seed=0)
    err = capsys.readouterr().err
    assert "alice:***@127.0.0.1:9" in err and secret not in err
    assert main(["runs", "list"]) == 2
    err = capsys.readouterr().err
    assert "alice:***@" in err and secret not in err
    assert main(["runs", "list", "--mongo", url]) == 2
    assert secret not in capsys.readouterr().err
    recorded = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert recorded and secret not in recorded
