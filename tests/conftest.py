import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared" / "data" / "sudoku"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


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
