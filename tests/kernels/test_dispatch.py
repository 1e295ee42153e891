"""Dispatch: `auto` keeps CUDA on the plain-torch path until the GPU check has passed."""
import types

import pytest

from kernels import dispatch


def test_auto_stays_on_torch_on_cuda_until_gpu_checked(monkeypatch, capsys):
    cuda, cpu = types.SimpleNamespace(is_cuda=True), types.SimpleNamespace(is_cuda=False)
    monkeypatch.setenv("TDRM_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "GPU_CHECKED", False)
    monkeypatch.setattr(dispatch, "_told", False)
    assert not dispatch.use_triton(cuda) and not dispatch.use_triton(cuda) and not dispatch.use_triton(cpu)
    err = capsys.readouterr().err
    assert err.count("TDRM_KERNELS=triton") == 1  # said once, with how to opt in
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    assert dispatch.use_triton(cuda) and dispatch.use_triton(cpu)
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    assert not dispatch.use_triton(cuda)
    monkeypatch.setenv("TDRM_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "GPU_CHECKED", True)
    assert dispatch.use_triton(cuda) and not dispatch.use_triton(cpu)
    monkeypatch.setenv("TDRM_KERNELS", "fastest")
    with pytest.raises(ValueError, match="TDRM_KERNELS"):
        dispatch.use_triton(cpu)
