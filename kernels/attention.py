"""Non-causal flash attention (FlashAttention-2 schedule), forward and backward, with an optional
key-padding mask and, for TRM's attention variant, rotary embeddings fused into the prologue.

    o = softmax(rope(q) rope(k)^T / sqrt(E), masked keys -> -inf) v

Forward: one program per (query block, batch x head); keys and values stream through in blocks
with an online softmax; the log-sum-exp of every query row (base 2, scaled logits) is saved.
Backward: delta = rowsum(do * o) (torch), then one kernel accumulating dk, dv per key block over
the query blocks and one accumulating dq per query block over the key blocks (no atomics).
With RoPE the backward runs on the rotated q, k (rotated in torch) and rotates dq, dk back with
the transpose of the rotation.

`attention_reference` is the spec (and the CPU path): RoPE as `apply_rope`, then PyTorch's
scaled_dot_product_attention. `attention` dispatches (kernels/dispatch.py).

Shapes: B batch, H heads, L sequence (any length; blocks are masked), E head dim (a power of two,
>= 16; >= 32 with RoPE, whose halves feed tl.dot). Mask (B, L) bool, True = attend to that key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import dot as _dot
from .common import dot_flags
from .dispatch import interpreting, mode, use_triton

LOG2E = 1.4426950408889634


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, E), tables (L, E); rotate-half convention, result in x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rot * sin).to(x.dtype)


def _unrope(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose of `apply_rope` applied to a gradient: g cos + rot^T(g sin), rot^T(y) = [y2, -y1]."""
    gs = (g.float() * sin)
    g1, g2 = gs.chunk(2, dim=-1)
    return (g.float() * cos + torch.cat([g2, -g1], dim=-1)).to(g.dtype)


def _check_mask(mask: torch.Tensor | None, b: int, length: int) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.shape != (b, length):
        raise ValueError(f"attention mask must be bool ({b}, {length}) with True = attend, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any(-1).all()):
        raise ValueError("attention mask hides every key of some sample; each needs at least one")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                        rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q, k, v (B, H, L, E) -> (B, H, L, E). The spec."""
    _check_mask(mask, q.shape[0], k.shape[2])
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


# -- kernels -------------------------------------------------------------------------------------
def _configs():
    cfgs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)]
    if not interpreting():  # multi-config autotune crashes the interpreter
        cfgs += [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
                 triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
                 triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3)]
    return cfgs


def _bwd_configs():
    cfgs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)]
    if not interpreting():
        cfgs += [triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2),
                 triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2)]
    return cfgs


@triton.jit
def _p_ds(q, k, v, do, lse, delta, keep, qk_scale, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Backward core of one (query block, key block) tile: probabilities p (recomputed from the
    saved lse, 0 where `keep` is false) and ds = p (do v^T - delta), both (BM, BN)."""
    s = _dot(q, tl.trans(k), UPCAST, PREC) * qk_scale
    p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
    dp = _dot(do, tl.trans(v), UPCAST, PREC)
    return p, p * (dp - delta[:, None])


@triton.jit
def _rows(ptr, rows, sl, se, L, E: tl.constexpr):
    """Rows (R,) of a (L, E) slice through its strides, zero past L: (R, E)."""
    e = tl.arange(0, E)
    return tl.load(ptr + rows[:, None] * sl + e[None, :] * se, mask=rows[:, None] < L, other=0.0)


@triton.jit
def _keys_kept(MASK, cols, L, HAS_MASK: tl.constexpr):
    """(BN,) bool: the key exists and, with a mask, is not masked out. MASK points at the sample's row."""
    keep = cols < L
    if HAS_MASK:
        keep = keep & (tl.load(MASK + cols, mask=cols < L, other=0) != 0)
    return keep


@triton.jit
def _load_roped(ptr, rows, sl, se, cos_ptr, sin_ptr, L, E: tl.constexpr, HAS_ROPE: tl.constexpr):
    """Rows (R,) of a (L, E) slice, rotated when HAS_ROPE; returns (lo, hi) halves (R, E/2), or the
    whole row twice when not rotating (only the first is used then)."""
    rm = rows[:, None] < L
    if HAS_ROPE:
        h = tl.arange(0, E // 2)
        lo = tl.load(ptr + rows[:, None] * sl + h[None, :] * se, mask=rm, other=0.0)
        hi = tl.load(ptr + rows[:, None] * sl + (h[None, :] + E // 2) * se, mask=rm, other=0.0)
        c_lo = tl.load(cos_ptr + rows[:, None] * E + h[None, :], mask=rm, other=0.0)
        c_hi = tl.load(cos_ptr + rows[:, None] * E + h[None, :] + E // 2, mask=rm, other=0.0)
        s_lo = tl.load(sin_ptr + rows[:, None] * E + h[None, :], mask=rm, other=0.0)
        s_hi = tl.load(sin_ptr + rows[:, None] * E + h[None, :] + E // 2, mask=rm, other=0.0)
        lo32, hi32 = lo.to(tl.float32), hi.to(tl.float32)
        # rotated in fp32 and rounded to the storage dtype, as apply_rope does
        r_lo = (lo32 * c_lo - hi32 * s_lo).to(lo.dtype)
        r_hi = (hi32 * c_hi + lo32 * s_hi).to(lo.dtype)
        return r_lo, r_hi
    else:
        x = _rows(ptr, rows, sl, se, L, E)
        return x, x


@triton.autotune(configs=_configs(), key=["L", "E", "HAS_MASK", "HAS_ROPE"])
@triton.jit
def _fwd(Q, K, V, O, LSE, MASK, COS, SIN,
         sqb, sqh, sql, sqe, skb, skh, skl, ske, svb, svh, svl, sve, sob, soh, sol, soe, smb,
         H, L, qk_scale,
         E: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ROPE: tl.constexpr, UPCAST: tl.constexpr,
         PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    e = tl.arange(0, E)
    q_lo, q_hi = _load_roped(Q + b * sqb + h * sqh, rows, sql, sqe, COS, SIN, L, E, HAS_ROPE)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, E], tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)  # (BN,)
        k_lo, k_hi = _load_roped(K + b * skb + h * skh, cols, skl, ske, COS, SIN, L, E, HAS_ROPE)
        if HAS_ROPE:
            s = _dot(q_lo, tl.trans(k_lo), UPCAST, PREC) + _dot(q_hi, tl.trans(k_hi), UPCAST, PREC)
        else:
            s = _dot(q_lo, tl.trans(k_lo), UPCAST, PREC)  # (BM, BN)
        s = s * qk_scale  # base-2 logits
        s = tl.where(_keys_kept(MASK + b * smb, cols, L, HAS_MASK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with every key masked
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])  # (BM, BN)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _rows(V + b * svb + h * svh, cols, svl, sve, L, E)  # (BN, E)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PREC)
        m_i = m_new
    o = acc / l_i[:, None]
    rm = rows < L
    tl.store(O + b * sob + h * soh + rows[:, None] * sol + e[None, :] * soe, o.to(O.dtype.element_ty),
             mask=rm[:, None])
    tl.store(LSE + bh * L + rows, m_i + tl.log2(l_i), mask=rm)


@triton.autotune(configs=_bwd_configs(), key=["L", "E", "HAS_MASK"])
@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, MASK,
              sqb, sqh, sql, sqe, skb, skh, skl, ske, svb, svh, svl, sve, sdb, sdh, sdl, sde, smb,
              H, L, qk_scale, sm_scale,
              E: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block: dv = sum_q p^T do, dk = scale sum_q ds^T q. DK, DV contiguous (B, H, L, E)."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    e = tl.arange(0, E)
    cm = cols < L
    k = _rows(K + b * skb + h * skh, cols, skl, ske, L, E)  # (BN, E)
    v = _rows(V + b * svb + h * svh, cols, svl, sve, L, E)
    valid = _keys_kept(MASK + b * smb, cols, L, HAS_MASK)
    dk = tl.zeros([BLOCK_N, E], tl.float32)
    dv = tl.zeros([BLOCK_N, E], tl.float32)
    for start in range(0, L, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rm = rows < L
        q = _rows(Q + b * sqb + h * sqh, rows, sql, sqe, L, E)  # (BM, E)
        do = _rows(DO + b * sdb + h * sdh, rows, sdl, sde, L, E)
        lse = tl.load(LSE + bh * L + rows, mask=rm, other=0.0)
        delta = tl.load(DELTA + bh * L + rows, mask=rm, other=0.0)
        p, ds = _p_ds(q, k, v, do, lse, delta, rm[:, None] & valid[None, :], qk_scale, UPCAST, PREC)  # (BM, BN)
        dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST, PREC)
        dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PREC)
    out = bh * L * E + cols[:, None] * E + e[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=cm[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=cm[:, None])


@triton.autotune(configs=_bwd_configs(), key=["L", "E", "HAS_MASK"])
@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, MASK,
            sqb, sqh, sql, sqe, skb, skh, skl, ske, svb, svh, svl, sve, sdb, sdh, sdl, sde, smb,
            H, L, qk_scale, sm_scale,
            E: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One query block: dq = scale sum_k ds k. DQ contiguous (B, H, L, E)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    e = tl.arange(0, E)
    rm = rows < L
    q = _rows(Q + b * sqb + h * sqh, rows, sql, sqe, L, E)  # (BM, E)
    do = _rows(DO + b * sdb + h * sdh, rows, sdl, sde, L, E)
    lse = tl.load(LSE + bh * L + rows, mask=rm, other=0.0)
    delta = tl.load(DELTA + bh * L + rows, mask=rm, other=0.0)
    dq = tl.zeros([BLOCK_M, E], tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        valid = _keys_kept(MASK + b * smb, cols, L, HAS_MASK)
        k = _rows(K + b * skb + h * skh, cols, skl, ske, L, E)  # (BN, E)
        v = _rows(V + b * svb + h * svh, cols, svl, sve, L, E)
        _, ds = _p_ds(q, k, v, do, lse, delta, rm[:, None] & valid[None, :], qk_scale, UPCAST, PREC)
        dq += _dot(ds.to(k.dtype), k, UPCAST, PREC)
    tl.store(DQ + bh * L * E + rows[:, None] * E + e[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=rm[:, None])


# -- launchers -----------------------------------------------------------------------------------
def _validate(q, k, v, rope):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention needs q, k, v of one (B, H, L, E) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    e = q.shape[-1]
    if e < 16 or e & (e - 1) or (rope is not None and e < 32):
        raise ValueError(f"the attention kernel needs a power-of-two head dim >= 16 (>= 32 with RoPE), got {e}")
    if rope is not None and (rope[0].shape != (q.shape[2], e) or rope[1].shape != (q.shape[2], e)):
        raise ValueError(f"RoPE tables must be ({q.shape[2]}, {e}), got {tuple(rope[0].shape)}")


def attention_triton_fwd(q, k, v, mask=None, rope=None, out=None):
    """(o (B, H, L, E) contiguous, lse (B*H, L) fp32 base-2 log-sum-exp of the scaled logits)."""
    _validate(q, k, v, rope)
    b, h, length, e = q.shape
    _check_mask(mask, b, length)
    o = torch.empty(b, h, length, e, dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty(b * h, length, dtype=torch.float32, device=q.device)
    m = mask.to(torch.int8).contiguous() if mask is not None else q.new_empty(1, dtype=torch.int8)
    cos, sin = (rope[0].float().contiguous(), rope[1].float().contiguous()) if rope is not None else (lse, lse)
    upcast, prec = dot_flags(q.dtype)
    grid = lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), b * h)  # noqa: E731
    _fwd[grid](q, k, v, o, lse, m, cos, sin, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
               m.stride(0) if mask is not None else 0, h, length, LOG2E / math.sqrt(e),
               E=e, HAS_MASK=mask is not None, HAS_ROPE=rope is not None, UPCAST=upcast, PREC=prec)
    return o, lse


def attention_triton_bwd(do, q, k, v, o, lse, mask=None):
    """dq, dk, dv (contiguous) for attention without RoPE (the caller rotates around it)."""
    b, h, length, e = q.shape
    delta = (do.float() * o.float()).sum(-1).reshape(b * h, length).contiguous()  # (B*H, L)
    dq, dk, dv = (torch.empty(b, h, length, e, dtype=t.dtype, device=t.device) for t in (q, k, v))
    m = mask.to(torch.int8).contiguous() if mask is not None else q.new_empty(1, dtype=torch.int8)
    upcast, prec = dot_flags(q.dtype)
    args = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), m.stride(0) if mask is not None else 0,
            h, length, LOG2E / math.sqrt(e), 1.0 / math.sqrt(e))
    kw = dict(E=e, HAS_MASK=mask is not None, UPCAST=upcast, PREC=prec)
    _bwd_dkdv[lambda meta: (triton.cdiv(length, meta["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv, m, *args, **kw)
    _bwd_dq[lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq, m, *args, **kw)
    return dq, dk, dv


@torch.library.custom_op("tdrm::attention_fwd", mutates_args=())
def attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     cos: torch.Tensor | None, sin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_triton_fwd(q, k, v, mask, None if cos is None else (cos, sin))


@attention_fwd_op.register_fake
def _(q, k, v, mask, cos, sin):
    b, h, length, e = q.shape
    return q.new_empty(b, h, length, e), q.new_empty(b * h, length, dtype=torch.float32)


@torch.library.custom_op("tdrm::attention_bwd", mutates_args=())
def attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                     lse: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor | None,
                     sin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv; with RoPE the kernels run on the rotated q, k and the gradients rotate back."""
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    dq, dk, dv = attention_triton_bwd(do, q, k, v, o, lse, mask)
    if cos is not None:
        dq, dk = _unrope(dq, cos, sin), _unrope(dk, cos, sin)
    return dq, dk, dv


@attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, mask, cos, sin):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


def _setup(ctx, inputs, output):
    q, k, v, mask, cos, sin = inputs
    ctx.save_for_backward(q, k, v, *output, mask, cos, sin)


def _backward(ctx, do, _dlse):
    return (*attention_bwd_op(do, *ctx.saved_tensors), None, None, None)


attention_fwd_op.register_autograd(_backward, setup_context=_setup)


def attention_triton(q, k, v, mask=None, rope=None) -> torch.Tensor:
    """The Triton path with autograd (a torch.library custom op, opaque to torch.compile)."""
    _validate(q, k, v, rope)
    cos, sin = rope if rope is not None else (None, None)
    return attention_fwd_op(q, k, v, mask, cos, sin)[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Non-causal attention: the Triton kernel on CUDA (or when forced), the reference elsewhere.
    On `auto`, head dims the kernel does not take (not a power of two >= 16) use the reference."""
    e = q.shape[-1]
    fits = e >= 16 and not e & (e - 1) and (rope is None or e >= 32)
    if use_triton(q) and (fits or mode() == "triton"):
        return attention_triton(q, k, v, mask, rope)
    return attention_reference(q, k, v, mask, rope)
