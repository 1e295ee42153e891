"""The kernel benchmark and the GPU check script: what they do on a machine without CUDA, and a
smoke run of every benchmark row at tiny shapes (interpreter; the times mean nothing)."""
import json
import subprocess
import sys

import pytest
import torch

from kernels import bench

from .util import DEVICE

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert bench.main([]) == 0
    assert "no CUDA" in capsys.readouterr().out
    assert bench.main(["--device", "cpu"]) == 2  # full shapes are not run in the interpreter


@pytest.mark.slow
def test_small_run_writes_every_row_with_speedups(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", DEVICE, "--small", "--no-compile", "--reps", "1", "--dtype", "fp32",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ops = [r["op"] for r in res["rows"]]
    for want in ("add_rmsnorm fwd+bwd", "swiglu fwd+bwd", "mlp_t fwd (no grad)", "mlp_t fwd+bwd", "attention fwd+bwd",
                 "adaln+gated residual fwd+bwd"):
        assert want in ops
    for r in res["rows"]:
        assert r["ms"]["eager"] > 0 and r["ms"]["triton"] > 0, r
        assert r["x_eager"] == pytest.approx(r["ms"]["eager"] / r["ms"]["triton"])
    assert "mlp_t fwd+bwd" in capsys.readouterr().out
    # the whole-model rows use the library's models, so they are `python -m tdrm.bench kernels`
    from tdrm.cli import bench_main
    models = tmp_path / "models.json"
    assert bench_main(["kernels", "--device", DEVICE, "--small", "--no-compile", "--reps", "1", "--dtype", "fp32",
                       "--out", str(models)]) == 0
    rows = json.loads(models.read_text())["rows"]
    assert [r["op"] for r in rows] == ["TRM supervision step", "TRM no-grad cycle", "denoiser fwd+bwd"]
    for r in rows:
        assert r["ms"]["eager"] > 0 and r["ms"]["triton"] > 0, r
    assert "denoiser fwd+bwd" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_script_writes_its_log_and_refuses_without_a_directory(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "kernels" / "gpu_check.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, env={"PATH": __import__("os").environ["PATH"],
                                                            "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr
    assert "no CUDA" in (tmp_path / "out" / "summary.txt").read_text()
    assert "torch" in (tmp_path / "out" / "env.txt").read_text()
    assert subprocess.run(["bash", str(ROOT / "kernels" / "gpu_check.sh")], capture_output=True).returncode != 0
