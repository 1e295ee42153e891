"""Sacred runs made by the real tracker (so the FileStorage layout is Sacred's own): a completed
teacher run and a second one under a DVC experiment with another lr, a failed and an interrupted
distill run, and a run left RUNNING with a stale heartbeat (a killed process)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdrm.tracking.sacred_run import tracked_run

from ..conftest import free_port


def _teacher(lr, steps):
    def fn(tracker):
        for s in range(1, steps + 1):
            tracker.log_scalar("train.lm_loss", 2.0 / s + lr, s)
            tracker.log_scalar("train.exact_acc", min(1.0, 0.1 * s), s)
        return {"exact_accuracy": min(1.0, 0.1 * steps), "ci95": [0.0, 1.0], "nested": {"cell_accuracy": 0.9}}
    return fn


def _fail(exc):
    def fn(tracker):
        tracker.log_scalar("distill.mse", 1.0, 1)
        raise exc
    return fn


def make_runs(directory: Path, env_extra: dict | None = None) -> dict:
    """Runs into `directory`; returns {name: run id}."""
    old = dict(os.environ)
    os.environ["TDRM_RUNS_DIR"] = str(directory)
    os.environ.pop("TDRM_MONGO_URL", None)
    os.environ.update(env_extra or {})
    try:
        tracked_run("teacher", {"teacher": {"lr": 1e-3, "steps": 4}, "profile": "tiny"},
                                  _teacher(1e-3, 4), seed=0)
        os.environ.update({"DVC_EXP_NAME": "exp-lr", "DVC_EXP_BASELINE_REV": "abc123"})
        tracked_run("teacher", {"teacher": {"lr": 2e-3, "steps": 6}, "profile": "tiny"},
                                 _teacher(2e-3, 6), seed=0)
        del os.environ["DVC_EXP_NAME"], os.environ["DVC_EXP_BASELINE_REV"]
        for name, exc in (("failed", RuntimeError("boom")), ("interrupted", KeyboardInterrupt())):
            try:
                tracked_run("distill", {"distill": {"lr": 1e-3}}, _fail(exc), seed=1)
            except (RuntimeError, KeyboardInterrupt):
                pass
    finally:
        os.environ.clear()
        os.environ.update(old)
    runs = sorted((p for p in directory.iterdir() if (p / "run.json").exists()), key=lambda p: int(p.name))
    ids = {"base": runs[0].name, "exp": runs[1].name, "failed": runs[2].name, "interrupted": runs[3].name}
    # a run whose process was killed: RUNNING with a heartbeat an hour old
    dead = directory / str(len(runs) + 1)
    shutil.copytree(runs[0], dead)
    raw = json.loads((dead / "run.json").read_text())
    raw.update(status="RUNNING", stop_time=None, heartbeat="2026-01-01T01:00:00.000000",
               start_time="2026-01-01T00:00:00.000000", result=None)
    (dead / "run.json").write_text(json.dumps(raw))
    info = json.loads((dead / "info.json").read_text())
    info["run_uid"] = "killed-run"  # a run of its own, not the copied one
    (dead / "info.json").write_text(json.dumps(info))
    ids["dead"] = dead.name
    return ids


@pytest.fixture(scope="session")
def runs_fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return d, make_runs(d)


@pytest.fixture
def wire_mongo(tmp_path):
    """A MongoDB wire-protocol server (PyPI nx-27017, SQLite-backed) for this test only; skipped
    when the package is missing. Its quirks stay here: one --data-dir per server so databases do
    not share tables, and fewer than 10 runs per database (it sorts integer _id as text, so
    Sacred's auto-increment would repeat an id after run 10); its own PID file, since with the
    default one a second server refuses to start while another runs."""
    pytest.importorskip("nx_27017")
    pymongo = pytest.importorskip("pymongo")
    port = free_port()
    data = tmp_path / "mongo"
    data.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; "
                             "sys.argv[0] = 'nx-27017'; sys.exit(main())", "--data-dir", str(data), "-p", str(port),
                             "--pid-file", str(tmp_path / "nx.pid")],  # its default PID file is shared
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"mongodb://127.0.0.1:{port}"
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=500)
    for _ in range(100):
        try:
            client.admin.command("ping")
            break
        except Exception:
            if proc.poll() is not None:
                pytest.skip(f"nx-27017 did not start: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("nx-27017 did not answer within 10 s")
    yield url
    client.close()
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # it does not always stop on SIGTERM while a client lingers
        proc.kill()
        proc.wait(10)
