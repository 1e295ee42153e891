"""The flash-attention kernel against its reference (RoPE + PyTorch SDPA): forward, log-sum-exp and
every gradient, with and without RoPE and a key mask, on awkward lengths (interpreter on CPU)."""
import math

import pytest
import torch

from kernels.attention import apply_rope, attention, attention_reference, attention_triton, attention_triton_fwd

from .util import DEVICE, DTYPES, assert_matches, randn


def _rope(length, e):
    inv = 1.0 / (10000 ** (torch.arange(0, e, 2, dtype=torch.float32) / e))
    emb = torch.outer(torch.arange(length, dtype=torch.float32), inv).repeat(1, 2)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


def _mask(b, length, seed):
    m = torch.rand(b, length, generator=torch.Generator().manual_seed(seed)) > 0.4
    m[:, 0] = True
    return m.to(DEVICE)


CASES = [  # B, H, L, E, rope, mask
    (2, 2, 36, 16, False, False),
    (3, 1, 81, 64, True, False),
    (1, 2, 97, 64, False, True),
    (2, 1, 130, 32, True, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,length,e,rope,mask", CASES)
def test_forward_and_gradients_match_the_reference(dtype, b, h, length, e, rope, mask):
    q, k, v = (randn(b, h, length, e, seed=s, dtype=dtype, transpose=s == 1) for s in range(3))
    rp = _rope(length, e) if rope else None
    m = _mask(b, length, 3) if mask else None
    do = randn(b, h, length, e, seed=4, dtype=dtype)

    def run(dt, fn):
        ins = [t.to(dt).clone().requires_grad_(True) for t in (q, k, v)]
        o = fn(*ins)
        o.backward(do.to(dt))
        return [o.detach()] + [t.grad for t in ins]

    got = run(dtype, lambda *x: attention_triton(*x, m, rp))
    want = run(torch.float32, lambda *x: attention_reference(*x, m, rp))
    lowp = run(dtype, lambda *x: attention_reference(*x, m, rp))
    for name, a, w, lp in zip(("o", "dq", "dk", "dv"), got, want, lowp):
        assert a.dtype == dtype
        # the kernel rounds the probabilities to the storage dtype before P V (as FlashAttention does);
        # PyTorch's CPU SDPA keeps them in fp32: one more rounding unit
        assert_matches(a, w, lp, name, ulps=2)


def test_lse_is_the_log_sum_exp_and_every_output_is_written():
    b, h, length, e = 2, 2, 97, 64
    q, k, v = (randn(b, h, length, e, seed=s) for s in range(3))
    m = _mask(b, length, 5)
    out = torch.full((b, h, length, e), float("nan"), device=DEVICE)
    o, lse = attention_triton_fwd(q, k, v, m, out=out)
    assert not torch.isnan(o).any()
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(e)
    logits = logits.masked_fill(~m[:, None, None, :], float("-inf"))
    want = torch.logsumexp(logits, -1).reshape(b * h, length) / math.log(2)  # saved in base 2
    torch.testing.assert_close(lse, want, rtol=1e-5, atol=1e-5)


def test_masked_keys_are_ignored():
    q, k, v = (randn(1, 2, 40, 32, seed=s) for s in range(3))
    m = _mask(1, 40, 6)
    o = attention_triton(q, k, v, m)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, ~m[0]] = 100.0  # anything behind the mask must not matter
    v2[:, :, ~m[0]] = -100.0
    torch.testing.assert_close(attention_triton(q, k2, v2, m), o)


def test_rope_matches_rotating_first_and_the_gradient_unrotates():
    q, k, v = (randn(2, 2, 36, 64, seed=s) for s in range(3))
    cos, sin = _rope(36, 64)
    got = attention_triton(q, k, v, None, (cos, sin))
    want = attention_triton(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dispatch_and_refusals(monkeypatch):
    q, k, v = (randn(2, 2, 36, 16, seed=s) for s in range(3))
    monkeypatch.setenv("TDRM_KERNELS", "torch")
    assert torch.equal(attention(q, k, v), attention_reference(q, k, v))
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="head dim"):
        attention(*(randn(1, 1, 8, 24, seed=s) for s in range(3)))
    with pytest.raises(ValueError, match="one \\(B, H, L, E\\) shape"):
        attention(q, k[:, :, :20], v)
    with pytest.raises(ValueError, match="mask must be bool"):
        attention(q, k, v, mask=torch.ones(2, 36, device=DEVICE))
    none = torch.zeros(2, 36, dtype=torch.bool, device=DEVICE)
    none[0] = True
    with pytest.raises(ValueError, match="every key"):
        attention(q, k, v, mask=none)
    monkeypatch.setenv("TDRM_KERNELS", "auto")  # on auto an odd head dim takes the reference, on any device
    odd = [randn(1, 1, 8, 24, seed=s) for s in range(3)]
    assert torch.equal(attention(*odd), attention_reference(*odd))


def test_a_fully_masked_first_key_block_gives_no_nan():
    """Keys 0..79 hidden: whole key blocks (64 wide) see only -inf before any valid key."""
    q, k, v = (randn(2, 1, 130, 32, seed=s) for s in range(3))
    m = torch.ones(2, 130, dtype=torch.bool, device=DEVICE)
    m[:, :80] = False
    qa, ka, va = (t.clone().requires_grad_(True) for t in (q, k, v))
    o = attention_triton(qa, ka, va, m)
    o.sum().backward()
    qb, kb, vb = (t.clone().requires_grad_(True) for t in (q, k, v))
    attention_reference(qb, kb, vb, m).sum().backward()
    assert_matches(o.detach(), attention_reference(q, k, v, m), what="o")
    for a, b in ((qa, qb), (ka, kb), (va, vb)):
        assert_matches(a.grad, b.grad, what="grad")
