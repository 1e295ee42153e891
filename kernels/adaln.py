"""The denoiser block's gated residual and adaLN modulation fused (DiT's adaLN-Zero):

    h2 = h + gate * a                       (skipped when a is None: the block's first norm)
    x  = layer_norm(h2) * (1 + scale) + shift

with per-sample gate, shift, scale (B, D) broadcast over the N tokens, layer norm without
affine weights over D, statistics in fp32. One kernel reads h, a once and writes h2 and x; the
backward kernel writes dh (= dh2 + the layer-norm backward of dx (1 + scale)) and da, plus
per-block partial sums for dgate, dshift, dscale that torch adds up over the blocks of a sample.

`adaln_reference` is the spec (and the CPU path); `adaln` dispatches (kernels/dispatch.py).

Shapes: B batch, N tokens, D features; a program handles BLOCK_N tokens of one sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .dispatch import use_triton


def adaln_reference(h, shift, scale, a=None, gate=None, eps: float = 1e-5):
    """h (B, N, D), shift/scale/gate (B, D), a like h -> (h2, x), both (B, N, D); h2 is h without a.
    Op for op what the denoiser ran before the kernel existed."""
    if a is not None:
        h = h + gate[:, None] * a
    x = F.layer_norm(h, (h.shape[-1],), eps=eps)
    return h, x * (1 + scale[:, None]) + shift[:, None]


@triton.jit
def _tile(pid, b, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows (tokens) and columns of one program's (BLOCK_N, BLOCK_D) tile of sample b."""
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    rm, cm = rows < N, cols < D
    return rows, cols, rm, cm, rm[:, None] & cm[None, :], b * N * D + rows[:, None] * D + cols[None, :]


@triton.jit
def _fwd(H, A, G, SH, SC, H2, X, MEAN, RSTD, N, D, eps,
         HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    rows, cols, rm, cm, m2, offs = _tile(pid, b, N, D, BLOCK_N, BLOCK_D)
    h = tl.load(H + offs, mask=m2, other=0.0).to(tl.float32)  # (BN, BD)
    if HAS_RES:
        a = tl.load(A + offs, mask=m2, other=0.0).to(tl.float32)
        g = tl.load(G + b * D + cols, mask=cm, other=0.0).to(tl.float32)
        h = (h + g[None, :] * a).to(H2.dtype.element_ty).to(tl.float32)  # h2 is stored, and normed, in the dtype
        tl.store(H2 + offs, h.to(H2.dtype.element_ty), mask=m2)
    mean = tl.sum(h, 1) / D
    c = tl.where(cm[None, :], h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, 1) / D + eps)
    sh = tl.load(SH + b * D + cols, mask=cm, other=0.0).to(tl.float32)
    sc = tl.load(SC + b * D + cols, mask=cm, other=0.0).to(tl.float32)
    x = c * rstd[:, None] * (1.0 + sc[None, :]) + sh[None, :]
    tl.store(X + offs, x.to(X.dtype.element_ty), mask=m2)
    tl.store(MEAN + b * N + rows, mean, mask=rm)
    tl.store(RSTD + b * N + rows, rstd, mask=rm)


@triton.jit
def _bwd(DX, DH2, H2, A, G, SC, MEAN, RSTD, DH, DA, PG, PSH, PSC, N, D, NB,
         HAS_RES: tl.constexpr, HAS_DH2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    rows, cols, rm, cm, m2, offs = _tile(pid, b, N, D, BLOCK_N, BLOCK_D)
    dx = tl.load(DX + offs, mask=m2, other=0.0).to(tl.float32)
    h2 = tl.load(H2 + offs, mask=m2, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + b * N + rows, mask=rm, other=0.0)
    rstd = tl.load(RSTD + b * N + rows, mask=rm, other=0.0)
    sc = tl.load(SC + b * D + cols, mask=cm, other=0.0).to(tl.float32)
    xhat = tl.where(m2, (h2 - mean[:, None]) * rstd[:, None], 0.0)
    dxhat = dx * (1.0 + sc[None, :])
    dh = rstd[:, None] * (dxhat - (tl.sum(dxhat, 1) / D)[:, None] - xhat * (tl.sum(dxhat * xhat, 1) / D)[:, None])
    if HAS_DH2:
        dh += tl.load(DH2 + offs, mask=m2, other=0.0).to(tl.float32)
    dh = tl.where(m2, dh, 0.0)
    tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=m2)
    part = (b * NB + pid) * D + cols
    tl.store(PSH + part, tl.sum(dx, 0), mask=cm)
    tl.store(PSC + part, tl.sum(dx * xhat, 0), mask=cm)
    if HAS_RES:
        a = tl.load(A + offs, mask=m2, other=0.0).to(tl.float32)
        g = tl.load(G + b * D + cols, mask=cm, other=0.0).to(tl.float32)
        tl.store(DA + offs, (dh * g[None, :]).to(DA.dtype.element_ty), mask=m2)
        tl.store(PG + part, tl.sum(dh * a, 0), mask=cm)


def _blocks(d: int) -> tuple[int, int]:
    bd = triton.next_power_of_2(d)
    return max(1, min(64, 8192 // bd)), bd


def _check(h, shift, scale, a, gate):
    b, _, d = h.shape
    for name, t in (("shift", shift), ("scale", scale)) + ((("gate", gate),) if a is not None else ()):
        if t is None or t.shape != (b, d):
            raise ValueError(f"adaln: {name} must be ({b}, {d}), got {None if t is None else tuple(t.shape)}")
    if a is not None and a.shape != h.shape:
        raise ValueError(f"adaln: the residual branch must be {tuple(h.shape)}, got {tuple(a.shape)}")


def adaln_triton_fwd(h, shift, scale, a=None, gate=None, eps=1e-5):
    """(h2, x, mean, rstd); tensors made contiguous, statistics (B, N) fp32."""
    _check(h, shift, scale, a, gate)
    b, n, d = h.shape
    h = h.contiguous()
    res = a is not None
    a_ = a.contiguous().to(h.dtype) if res else h
    g_ = gate.contiguous() if res else shift
    h2 = torch.empty_like(h) if res else h
    x = torch.empty_like(h)
    mean, rstd = (torch.empty(b, n, dtype=torch.float32, device=h.device) for _ in range(2))
    bn, bd = _blocks(d)
    _fwd[(triton.cdiv(n, bn), b)](h, a_, g_, shift.contiguous(), scale.contiguous(), h2, x, mean, rstd,
                                  n, d, eps, HAS_RES=res, BLOCK_N=bn, BLOCK_D=bd)
    return h2, x, mean, rstd


def adaln_triton_bwd(dx, dh2, h2, a, gate, scale, mean, rstd):
    """(dh, da, dgate, dshift, dscale); da and dgate are None without a residual branch."""
    h2 = h2.contiguous()  # without a residual branch this is the (possibly strided) input h
    b, n, d = h2.shape
    res, has_dh2 = a is not None, dh2 is not None
    bn, bd = _blocks(d)
    nb = triton.cdiv(n, bn)
    dh = torch.empty_like(h2)
    da = torch.empty_like(h2) if res else dh
    parts = torch.empty(3, b, nb, d, dtype=torch.float32, device=h2.device)
    dx = dx.contiguous()
    gate, scale = (None if gate is None else gate.contiguous()), scale.contiguous()
    _bwd[(nb, b)](dx, dh2.contiguous() if has_dh2 else dx, h2, a.contiguous() if res else h2,
                  gate if res else scale, scale, mean, rstd, dh, da, parts[0], parts[1], parts[2], n, d, nb,
                  HAS_RES=res, HAS_DH2=has_dh2, BLOCK_N=bn, BLOCK_D=bd)
    sums = parts.sum(2)  # (3, B, D); copies, so that no two gradients share storage
    return (dh, da if res else None, sums[0].to(gate.dtype, copy=True) if res else None,
            sums[1].to(scale.dtype, copy=True), sums[2].to(scale.dtype, copy=True))


@torch.library.custom_op("tdrm::adaln_fwd", mutates_args=())
def adaln_fwd_op(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, a: torch.Tensor | None,
                 gate: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h2, x, mean, rstd); without a residual branch h2 is an empty placeholder (h2 = h)."""
    h2, x, mean, rstd = adaln_triton_fwd(h, shift, scale, a, gate, eps)
    return (h2 if a is not None else h.new_empty(0)), x, mean, rstd


@adaln_fwd_op.register_fake
def _(h, shift, scale, a, gate, eps):
    b, n, _ = h.shape
    stat = h.new_empty(b, n, dtype=torch.float32)
    return (torch.empty_like(h, memory_format=torch.contiguous_format) if a is not None else h.new_empty(0),
            torch.empty_like(h, memory_format=torch.contiguous_format), stat, torch.empty_like(stat))


@torch.library.custom_op("tdrm::adaln_bwd", mutates_args=())
def adaln_bwd_op(dx: torch.Tensor, dh2: torch.Tensor | None, h2: torch.Tensor, a: torch.Tensor | None,
                 gate: torch.Tensor | None, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dshift, dscale, da, dgate); da and dgate are empty without a residual branch."""
    dh, da, dgate, dshift, dscale = adaln_triton_bwd(dx, dh2, h2, a, gate, scale, mean, rstd)
    return dh, dshift, dscale, (dx.new_empty(0) if da is None else da), (dx.new_empty(0) if dgate is None else dgate)


@adaln_bwd_op.register_fake
def _(dx, dh2, h2, a, gate, scale, mean, rstd):
    res = a is not None
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return (like(h2), like(scale), like(scale), like(h2) if res else dx.new_empty(0),
            like(gate) if res else dx.new_empty(0))


def _setup(ctx, inputs, output):
    h, shift, scale, a, gate, eps = inputs
    h2, _, mean, rstd = output
    res = a is not None
    ctx.save_for_backward(h2 if res else h, None if a is None else a.to(h.dtype), gate, scale, mean, rstd)
    ctx.res, ctx.a_dtype = res, None if a is None else a.dtype


def _backward(ctx, dh2, dx, _dmean, _drstd):
    h2, a, gate, scale, mean, rstd = ctx.saved_tensors
    dh, dshift, dscale, da, dgate = adaln_bwd_op(dx, dh2 if ctx.res else None, h2, a, gate, scale, mean, rstd)
    if not ctx.res:
        return dh, dshift, dscale, None, None, None
    return dh, dshift, dscale, da.to(ctx.a_dtype), dgate, None


adaln_fwd_op.register_autograd(_backward, setup_context=_setup)


def adaln_triton(h, shift, scale, a=None, gate=None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused Triton path with autograd (a torch.library custom op, opaque to torch.compile)."""
    _check(h, shift, scale, a, gate)
    h2, x, _, _ = adaln_fwd_op(h, shift, scale, a, gate, eps)
    return (h2 if a is not None else h), x


def adaln(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, a: torch.Tensor | None = None,
          gate: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + gate a, modulate(layer_norm(h + gate a), shift, scale)): fused Triton on CUDA (or
    forced), the reference elsewhere. h (B, N, D); shift, scale, gate (B, D)."""
    if use_triton(h):
        return adaln_triton(h, shift, scale, a, gate, eps)
    _check(h, shift, scale, a, gate)
    return adaln_reference(h, shift, scale, a, gate, eps)
