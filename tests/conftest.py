import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared" / "data" / "sudoku"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU tensors; set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kernel_path(request, monkeypatch):
    """Model and pipeline tests run the plain-torch reference ops; tests/kernels choose for themselves."""
    if "kernels" not in request.node.path.parts:
        monkeypatch.setenv("TDRM_KERNELS", "torch")


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """Sacred runs of tests go to a temporary FileStorage directory, never to runs/."""
    monkeypatch.setenv("TDRM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("TDRM_MONGO_URL", raising=False)


@pytest.fixture
def params_raw():
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))


@pytest.fixture
def tiny_params_file(tmp_path, params_raw):
    """The shipped params.yaml switched to its `tiny` profile."""
    params_raw["profile"] = "tiny"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_raw))
    return path


def tiny_params(overrides: dict | None = None):
    """The shipped params.yaml in its `tiny` profile, with nested overrides."""
    from tdrm import config
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "tiny"
    return config.from_dict(raw, overrides=overrides)


def tiny_teacher(tmp_dir: Path, steps: int):
    """Build the tiny 4x4 dataset in `tmp_dir` and train a teacher there for `steps` steps."""
    from tdrm.data.dataset import build
    from tdrm.train.teacher import train_teacher
    p = tiny_params({"teacher": {"steps": steps, "eval_every": 0}})
    build(p.data, tmp_dir, progress=False)
    train_teacher(p, tmp_dir, tmp_dir / "t.pt", progress=False)
    return p


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_traces(tmp_dir: Path, teacher_steps: int, limit: int):
    """A tiny teacher (`tiny_teacher`) and its recorded traces in `tmp_dir / "tr"`; returns the teacher."""
    from tdrm.config import Traces
    from tdrm.checkpoint import load_teacher
    from tdrm.traces.record import record
    tiny_teacher(tmp_dir, teacher_steps)
    teacher, _ = load_teacher(tmp_dir / "t.pt")
    record(teacher, tmp_dir / "t.pt", tmp_dir, tmp_dir / "tr", Traces(limit=limit, shard_size=48, num_aug=1), 0,
           "cpu", progress=False)
    return teacher


def crash_at(step: int):
    """A tracker that raises KeyboardInterrupt (a kill) when anything is logged at `step`."""
    from tdrm.tracking.base import Tracker

    class Crash(Tracker):
        def log_scalar(self, name, value, s):
            if s == step:
                raise KeyboardInterrupt

    return Crash()
