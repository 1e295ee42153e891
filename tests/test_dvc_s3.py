"""`dvc repro` of the tiny profile in a scratch copy of the project, then an S3 round trip
through a moto server on 127.0.0.1: push, delete cache and outs, pull, byte-identical."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from .conftest import ROOT, free_port

moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def s3(monkeypatch):
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    import boto3
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="tdrm-test")
    yield url
    server.stop()


def _dvc(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"dvc {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _scratch_project(tmp_path):
    """A copy of the project switched to the tiny profile, as a fresh git + DVC repo."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, proj / name)
    for d in ("stages", "tdrm", "kernels"):
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "tiny"
    (proj / "params.yaml").write_text(yaml.safe_dump(raw))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _dvc(proj, "init", "-q")
    return proj


def _git(proj, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=proj, check=True,
                   capture_output=True)


def _check_graph(logs):
    """Each stage's code deps in dvc.yaml are exactly the project modules its run imported (plus its
    script); the report stage declares every metrics and plot file the other stages write."""
    from .dvc_graph import code_deps, declared_code, log_name, script_of
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        log = logs / f"{log_name(st['cmd'])}.json"
        assert log.exists(), f"stage {name} did not run"
        used, declared = code_deps(log, script_of(st["cmd"])), declared_code(st["deps"])
        assert declared == used, (f"stage {name}: declared but not imported {sorted(declared - used)}; "
                                  f"imported but not declared {sorted(used - declared)}")
        assert "pyproject.toml" not in st["deps"]
    written = {next(iter(m)) if isinstance(m, dict) else m for n, st in stages.items() if n != "report"
               for kind in ("metrics", "plots") for m in st.get(kind, [])}
    assert written <= set(stages["report"]["deps"]), sorted(written - set(stages["report"]["deps"]))


@pytest.mark.slow
def test_repro_push_pull_roundtrip(tmp_path, s3, monkeypatch):
    from .dvc_graph import SITECUSTOMIZE
    proj = _scratch_project(tmp_path)
    _dvc(proj, "remote", "add", "-d", "s3", "s3://tdrm-test/tdrm")
    _dvc(proj, "remote", "modify", "--local", "s3", "endpointurl", s3)
    site, logs = tmp_path / "site", tmp_path / "imports"
    site.mkdir()
    logs.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TDRM_IMPORT_LOG", str(logs))
    _dvc(proj, "repro")
    _check_graph(logs)
    monkeypatch.delenv("TDRM_IMPORT_LOG")
    assert (proj / "dvc.lock").exists() and (proj / "metrics" / "teacher.json").exists()
    ckpt = (proj / "models" / "teacher.pt").read_bytes()
    tdrm_ckpt = (proj / "models" / "tdrm.pt").read_bytes()
    rl_ckpt = (proj / "models" / "tdrm_rl.pt").read_bytes()
    compared = json.loads((proj / "metrics" / "details" / "tdrm.json").read_text())
    teacher_metrics = json.loads((proj / "metrics" / "teacher.json").read_text())
    assert compared["n"] == 100 and compared["teacher"]["exact_accuracy"] == teacher_metrics["exact"]
    assert compared["difference_points"] == pytest.approx(
        100 * (compared["tdrm"]["exact_accuracy"] - teacher_metrics["exact"]))
    manifest = (proj / "traces" / "manifest.json").read_bytes()
    out = _dvc(proj, "metrics", "show")
    assert "teacher_exact" in out and "ci_low" in out and "p_vs_control" in out
    # headline columns only: none of the details (curves, paired counts, breakdowns, cost) is a metric
    for detail in ("per_step", "accuracy_by_sampling_steps", "only_first", "by_rating", "cost.", "ci95"):
        assert detail not in out, detail
    one = _dvc(proj, "metrics", "show", "metrics/tdrm.json")  # one file: one short table
    assert max(len(line) for line in one.splitlines()) < 250, one
    _dvc(proj, "push")
    shutil.rmtree(proj / ".dvc" / "cache")
    shutil.rmtree(proj / "models")
    shutil.rmtree(proj / "data")
    shutil.rmtree(proj / "traces")
    _dvc(proj, "pull")
    assert (proj / "models" / "teacher.pt").read_bytes() == ckpt
    assert (proj / "models" / "tdrm.pt").read_bytes() == tdrm_ckpt
    assert (proj / "models" / "tdrm_rl.pt").read_bytes() == rl_ckpt
    assert (proj / "traces" / "manifest.json").read_bytes() == manifest
    assert (proj / "data" / "task" / "meta.json").exists()
    # the traces dataset comes back intact: its manifest and every shard checksum verify
    from tdrm.traces.store import TraceReader
    for split in ("train", "val"):
        r = TraceReader(proj / "traces" / split)
        assert len(r) == (40 if split == "train" else 20)
        for i in range(len(r.shards)):
            r.load_shard(i)
    status = _dvc(proj, "status").lower()
    assert "up to date" in status, status  # nothing to reproduce after the pull


@pytest.mark.slow
def test_exp_run_with_set_params_and_exp_show(tmp_path):
    """The README's `dvc exp run -S ...` path: the whole tiny pipeline with a teacher and an RL
    setting changed; `dvc exp show` carries both params and the teacher and RL metrics."""
    proj = _scratch_project(tmp_path)
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "scratch")
    _dvc(proj, "exp", "run", "-S", "teacher.lr=0.002", "-S", "rl.group_size=2", "-S", "dist.nproc=2", "-n", "lr2e-3-g2")
    shown = json.loads(_dvc(proj, "exp", "show", "--json"))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    names = [e.get("name") for e in exps]
    assert "lr2e-3-g2" in names, names
    exp = next(e for e in exps if e.get("name") == "lr2e-3-g2")
    data = exp["revs"][0]["data"]
    params = data["params"]["params.yaml"]["data"]
    assert params["teacher"]["lr"] == 0.002 and params["rl"]["group_size"] == 2 and params["dist"]["nproc"] == 2
    metrics = data["metrics"]["metrics/teacher.json"]["data"]
    # the experiment's own teacher metrics: an accuracy over its 100 test puzzles is k / 100
    assert metrics["n"] == 100 and abs(100 * metrics["exact"] - round(100 * metrics["exact"])) < 1e-9
    rl = data["metrics"]["metrics/rl.json"]["data"]
    assert rl["n"] == 100 and rl["diff_points"] == pytest.approx(100 * (rl["exact"] - rl["before_exact"]))
    assert 0 < rl["p_value"] <= 1
    # DVC -> Sacred: the metrics name their run; Sacred -> DVC: the run knows its experiment and baseline
    from tdrm.tracking.store import FileRuns
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    runs = FileRuns(os.environ["TDRM_RUNS_DIR"])
    for stage, m in (("evaluate", metrics), ("rl", rl)):  # metrics/teacher.json comes from evaluate
        rec = runs.load(str(m["sacred_run_id"])).record
        assert (rec["stage"], rec["dvc_exp"], rec["dvc_baseline"], rec["status"]) == (stage, "lr2e-3-g2", head, "COMPLETED")
    # dist.nproc = 2: teacher, distill, the control and rl trained under torchrun on 2 gloo processes, and
    # each wrote one metrics file and one Sacred run (rank 0's), which records the launch
    for stage, name in (("teacher", "teacher_train"), ("distill", "distill_train"), ("distill_control", "distill_k1_train"),
                        ("rl", "rl")):
        trained = data["metrics"][f"metrics/{name}.json"]["data"]
        assert trained["world_size"] == 2, stage
        (run,) = [runs.load(i) for i in runs.ids() if runs.load(i).record["stage"] == stage]
        assert run.config["dist"] == {"world_size": 2, "backend": "gloo", "nodes": 1}, stage


def test_exp_run_temp_records_the_experiment_in_sacred(tmp_path):
    """`dvc exp run --temp` runs in a copy under .dvc/tmp/exps: the stage's Sacred run still lands in
    the runs directory and names its experiment and baseline commit."""
    from tdrm.tracking.store import FileRuns
    proj = _scratch_project(tmp_path)
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "scratch")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    _dvc(proj, "exp", "run", "--temp", "-n", "tmp-data", "data")
    runs = FileRuns(os.environ["TDRM_RUNS_DIR"])
    (rec,) = [runs.load(i).record for i in runs.ids()]
    assert (rec["stage"], rec["dvc_exp"], rec["dvc_baseline"], rec["status"]) == ("data", "tmp-data", head, "COMPLETED")
