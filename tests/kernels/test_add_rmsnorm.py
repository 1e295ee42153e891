"""The fused add + RMSNorm kernel against its reference, forward and backward, under Triton's
interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA)."""
import pytest
import torch

from kernels.add_rmsnorm import (add_rmsnorm, add_rmsnorm_triton, add_rmsnorm_reference, add_rmsnorm_triton_bwd,
                                 add_rmsnorm_triton_fwd)

# fp32: same math, only summation order differs. fp16/bf16: inputs are upcast and the arithmetic
# is fp32, so the error is the output rounding (fp16 ~1e-3, bf16 ~8e-3 relative); the backward
# reads y in the storage dtype, which adds about one more rounding.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, dtype, seed=0, transpose=False):
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(shape, generator=g) * 2).to(DEVICE, dtype), torch.randn(shape, generator=g).to(DEVICE, dtype)
    if transpose:  # non-contiguous views of the same shape
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        r = r.transpose(0, 1).contiguous().transpose(0, 1)
        assert not x.is_contiguous()
    return x, r


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 36, 64), (81, 48), (5, 97, 64), (130, 40)])
def test_forward_matches_reference_and_writes_every_output(dtype, shape):
    x, r = _inputs(shape, dtype, transpose=len(shape) == 3)
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)  # poisoned: every element must be written
    y, rstd = add_rmsnorm_triton_fwd(x, r, 1e-5, out=out)
    want = add_rmsnorm_reference(x, r, 1e-5)
    assert y.dtype == dtype and not torch.isnan(y).any()
    torch.testing.assert_close(y.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])
    s = (x.float() + r.float()).reshape(-1, shape[-1])
    torch.testing.assert_close(rstd, torch.rsqrt(s.square().mean(-1) + 1e-5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 36, 64), (97, 48)])
def test_backward_matches_reference_gradients(dtype, shape):
    x, r = _inputs(shape, dtype, seed=1)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    xa, ra = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
    add_rmsnorm_triton(xa, ra, 1e-5).backward(dy)
    xb, rb = x.float().requires_grad_(True), r.float().requires_grad_(True)  # the reference in fp32
    add_rmsnorm_reference(xb, rb, 1e-5).backward(dy.float())
    for got, want in ((xa.grad, xb.grad), (ra.grad, rb.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=2 * TOL[dtype], atol=2 * TOL[dtype])
    y, rstd = add_rmsnorm_triton_fwd(x, r)
    poisoned = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    assert not torch.isnan(add_rmsnorm_triton_bwd(dy, y, rstd, out=poisoned)).any()


def test_dispatch_uses_the_reference_on_cpu_and_can_be_forced(monkeypatch):
    x, r = _inputs((4, 36, 64), torch.float32)
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    assert torch.equal(add_rmsnorm(x, r), add_rmsnorm_reference(x, r))
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    torch.testing.assert_close(add_rmsnorm(x, r), add_rmsnorm_reference(x, r), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("TDRM_KERNELS", "fast")
    with pytest.raises(ValueError, match="TDRM_KERNELS"):
        add_rmsnorm(x, r)
    monkeypatch.delenv("TDRM_KERNELS")
    if not torch.cuda.is_available():
        assert torch.equal(add_rmsnorm(x, r), add_rmsnorm_reference(x, r))
    with pytest.raises(ValueError, match="equal shapes"):
        add_rmsnorm_triton_fwd(x, r[..., :32])
