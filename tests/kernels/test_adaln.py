"""The fused gated residual + adaLN modulation against its reference (interpreter on CPU)."""
import pytest
import torch

from kernels.adaln import adaln, adaln_reference, adaln_triton, adaln_triton_fwd

from .util import DTYPES, assert_matches, randn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d,res", [(2, 37, 64, True), (3, 130, 40, False), (2, 97, 48, True)])
def test_forward_and_gradients_match_the_reference(dtype, b, n, d, res):
    h, a = randn(b, n, d, seed=0, dtype=dtype, transpose=True), randn(b, n, d, seed=1, dtype=dtype)
    mod = randn(b, 3 * d, seed=2, dtype=dtype, scale=0.5)  # shift, scale, gate: strided chunks, as in the model
    dh2, dx = randn(b, n, d, seed=5, dtype=dtype), randn(b, n, d, seed=6, dtype=dtype)

    def run(dt, fn):
        hh, mm, aa = (t.to(dt).clone().requires_grad_(True) for t in (h, mod, a))
        shift, scale, gate = mm.chunk(3, -1)
        assert not gate.is_contiguous()
        h2, x = fn(hh, shift, scale, aa if res else None, gate if res else None)
        loss = (x.float() * dx.float()).sum() + (h2.float() * dh2.float()).sum() if res else (x.float() * dx.float()).sum()
        loss.backward()
        return [h2.detach(), x.detach(), hh.grad, mm.grad] + ([aa.grad] if res else [])

    got, want, lowp = run(dtype, adaln_triton), run(torch.float32, adaln_reference), run(dtype, adaln_reference)
    for name, g, w, lp in zip(("h2", "x", "dh", "d (shift, scale, gate)", "da"), got, want, lowp):
        assert g.dtype == dtype, name
        assert_matches(g, w, lp, name)


def test_statistics_and_dispatch(monkeypatch):
    h, a = randn(2, 37, 64), randn(2, 37, 64, seed=1)
    shift, scale, gate = (randn(2, 64, seed=s) for s in (2, 3, 4))
    h2, x, mean, rstd = adaln_triton_fwd(h, shift, scale, a, gate)
    want = h + gate[:, None] * a
    torch.testing.assert_close(mean, want.mean(-1))
    torch.testing.assert_close(rstd, torch.rsqrt(want.var(-1, unbiased=False) + 1e-5))
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    ref = adaln(h, shift, scale, a, gate)
    assert torch.equal(ref[1], adaln_reference(h, shift, scale, a, gate)[1])
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    for got, w in zip(adaln(h, shift, scale, a, gate), ref):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-5)
    assert adaln(h, shift, scale)[0] is h
    with pytest.raises(ValueError, match="gate must be"):
        adaln(h, shift, scale, a)
    with pytest.raises(ValueError, match="shift must be"):
        adaln(h, shift[:1], scale)
