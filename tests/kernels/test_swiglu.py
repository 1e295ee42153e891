"""The SwiGLU activation kernel against its reference, forward and backward (interpreter on CPU)."""
import pytest
import torch

from kernels.swiglu import swiglu, swiglu_reference, swiglu_triton, swiglu_triton_bwd, swiglu_triton_fwd

from .util import DEVICE, DTYPES, assert_matches, randn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 36, 96), (97, 130), (5, 81, 272)])
def test_forward_and_gradients_match_the_reference(dtype, shape):
    g, u = randn(*shape, seed=0, dtype=dtype, scale=3, transpose=len(shape) == 3), randn(*shape, seed=1, dtype=dtype)
    poisoned = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    assert_matches(swiglu_triton_fwd(g, u, out=poisoned), swiglu_reference(g.float(), u.float()),
                   swiglu_reference(g, u), "forward")
    da = randn(*shape, seed=2, dtype=dtype)
    ga, ua = g.detach().clone().requires_grad_(True), u.detach().clone().requires_grad_(True)
    swiglu_triton(ga, ua).backward(da)
    gb, ub = g.float().clone().requires_grad_(True), u.float().clone().requires_grad_(True)
    swiglu_reference(gb, ub).backward(da.float())
    gl, ul = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
    swiglu_reference(gl, ul).backward(da)
    assert_matches(ga.grad, gb.grad, gl.grad, "d gate")
    assert_matches(ua.grad, ub.grad, ul.grad, "d up")
    out = (torch.full(shape, float("nan"), dtype=dtype, device=DEVICE) for _ in range(2))
    assert not any(torch.isnan(t).any() for t in swiglu_triton_bwd(da, g, u, out=tuple(out)))


def test_dispatch_and_refusals(monkeypatch):
    g, u = randn(4, 36), randn(4, 36, seed=1)
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    assert torch.equal(swiglu(g, u), swiglu_reference(g, u))
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    torch.testing.assert_close(swiglu(g, u), swiglu_reference(g, u))
    with pytest.raises(ValueError, match="one shape and dtype"):
        swiglu(g, u[:, :8])
