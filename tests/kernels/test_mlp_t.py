"""The fused MLP-t sublayer against its reference (transpose, SwiGLU over L, residual, RMSNorm over
L, transpose back): forward and the gradients of h and of the three weights (interpreter on CPU)."""
import pytest
import torch

from kernels.mlp_t import mlp_t, mlp_t_reference, mlp_t_triton, mlp_t_triton_fwd
from tdrm.models.layers import swiglu_width

from .util import DEVICE, DTYPES, assert_matches, randn


def _weights(length, seed, multiple_of=16):
    inter = swiglu_width(length, 4.0, multiple_of)
    return [randn(inter, length, seed=seed, scale=length ** -0.5), randn(inter, length, seed=seed + 1, scale=length ** -0.5),
            randn(length, inter, seed=seed + 2, scale=inter ** -0.5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,length,d", [(2, 36, 64), (3, 97, 40), (1, 81, 130)])
def test_forward_and_gradients_match_the_reference(dtype, b, length, d):
    h = randn(b, length, d, seed=0, dtype=dtype, transpose=True)
    ws = _weights(length, 1)
    out = torch.full((b, length, d), float("nan"), dtype=dtype, device=DEVICE)
    y, rstd = mlp_t_triton_fwd(h, *ws, out=out)
    assert_matches(y, mlp_t_reference(h.float(), *ws), mlp_t_reference(h, *ws), "forward")
    assert rstd.shape == (b, d)
    dy = randn(b, length, d, seed=9, dtype=dtype)

    def run(dt, fn):
        ins = [h.to(dt).clone().requires_grad_(True)] + [w.clone().requires_grad_(True) for w in ws]
        fn(*ins).backward(dy.to(dt))
        return [t.grad for t in ins]

    got = run(dtype, lambda *x: mlp_t_triton(*x, 1e-5))
    want = run(torch.float32, lambda *x: mlp_t_reference(*x))
    lowp = run(dtype, lambda *x: mlp_t_reference(*x))
    for name, a, w, lp in zip(("dh", "d gate", "d up", "d down"), got, want, lowp):
        assert_matches(a, w, lp, name, dtype=dtype)


def test_paper_width_intermediate_is_chunked():
    """The paper's seq 97 (81 cells + 16 prefix) with multiple_of 256: I = 512 > one BLOCK_I."""
    h = randn(1, 97, 32, seed=0)
    ws = _weights(97, 1, multiple_of=256)
    assert ws[0].shape[0] == 512
    torch.testing.assert_close(mlp_t_triton_fwd(h, *ws)[0], mlp_t_reference(h, *ws), rtol=1e-4, atol=1e-5)


def test_dispatch_and_refusals(monkeypatch):
    h = randn(2, 36, 32)
    ws = _weights(36, 1)
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    assert torch.equal(mlp_t(h, *ws), mlp_t_reference(h, *ws))
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    torch.testing.assert_close(mlp_t(h, *ws), mlp_t_reference(h, *ws), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mlp_t over 36 positions"):
        mlp_t(h, ws[0], ws[1], ws[0])
