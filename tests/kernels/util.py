"""Shared helpers for the kernel tests: inputs on the test device and the tolerance rule."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def randn(*shape, seed=0, dtype=torch.float32, scale=1.0, transpose=False):
    """Seeded normal tensor on DEVICE; `transpose` gives a non-contiguous view of the same shape."""
    t = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(DEVICE, dtype)
    if transpose:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not t.is_contiguous()
    return t


def assert_matches(got, want, lowp=None, what="", dtype=None, ulps=1):
    """`got` (any dtype) against `want`, the reference computed in fp32 from the same inputs.

    fp32: the kernel does the same math in another summation order, so 1e-4 relative, 1e-5 absolute.
    fp16/bf16: the error comes from rounding to the storage dtype, whose size depends on the op and the
    shape, so the bound is relative to PyTorch's own: the largest error may be at most twice that of the
    reference run in the same dtype (`lowp`), plus one rounding unit at the output's scale.
    `ulps`: rounding units allowed beyond that, for kernels that round one more intermediate than the
    CPU reference does. `dtype`: the dtype the computation ran in, when it differs from got's (fp32 weight gradients).
    """
    dtype = dtype or got.dtype
    assert got.shape == want.shape, what
    assert not torch.isnan(got).any(), f"{what}: NaN in the kernel's output"
    g, w = got.float(), want.float()
    if dtype == torch.float32:
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")
        return
    ulp = ulps * torch.finfo(dtype).eps * w.abs().max().item()
    ref_err = (lowp.float() - w).abs().max().item()
    err = (g - w).abs().max().item()
    assert err <= 2 * ref_err + ulp, f"{what}: error {err:.3g} > 2 x reference's {ref_err:.3g} + {ulp:.3g}"
