"""Fused residual add + weightless RMSNorm, the post-norm of every TRM sublayer:
y = (x + r) / sqrt(mean((x + r)^2) + eps) over the last axis, computed in fp32.

Backward (no weight, so no reduction across rows): with s = x + r and y = s * rstd,
ds = rstd * (dy - y * mean(dy * y)), and dx = dr = ds. The forward saves rstd (one fp32 per row).
`add_rmsnorm_reference` is the spec; `add_rmsnorm` dispatches (kernels/dispatch.py).

Shapes: M rows (everything but the last axis), D features, BLOCK_D = next power of two >= D.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import use_triton


def add_rmsnorm_reference(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The spec: fp32 arithmetic, output in x's dtype."""
    s = x.float() + r.float()
    return (s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


@triton.jit
def _fwd(x_ptr, r_ptr, y_ptr, rstd_ptr, M, D, eps, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    cols = tl.arange(0, BLOCK_D)  # (BD,)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) + \
        tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BM, BD)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / D + eps)  # (BM,)
    tl.store(y_ptr + offs, (s * rstd[:, None]).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _bwd(dy_ptr, y_ptr, rstd_ptr, ds_ptr, M, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
    dot = tl.sum(dy * y, axis=1) / D  # (BM,)
    ds = rstd[:, None] * (dy - y * dot[:, None])
    tl.store(ds_ptr + offs, ds.to(ds_ptr.dtype.element_ty), mask=mask)


def _grid(m: int, block_m: int):
    return (triton.cdiv(m, block_m),)


def _block_m(d: int) -> int:
    return max(1, min(16, 4096 // triton.next_power_of_2(d)))


def add_rmsnorm_triton_fwd(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5, out: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y like x, rstd (M,) fp32). Inputs are made contiguous; `out` (tests poison it) is written in full."""
    if x.shape != r.shape:
        raise ValueError(f"add_rmsnorm needs equal shapes, got {tuple(x.shape)} and {tuple(r.shape)}")
    x2, r2 = x.contiguous().view(-1, x.shape[-1]), r.contiguous().view(-1, x.shape[-1]).to(x.dtype)
    m, d = x2.shape
    y = torch.empty_like(x2) if out is None else out.view(m, d)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    bm = _block_m(d)
    _fwd[_grid(m, bm)](x2, r2, y, rstd, m, d, eps, BLOCK_M=bm, BLOCK_D=triton.next_power_of_2(d))
    return y.view(x.shape), rstd


def add_rmsnorm_triton_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, out: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """ds (like y) = dx = dr."""
    d = y.shape[-1]
    dy2, y2 = dy.contiguous().view(-1, d), y.contiguous().view(-1, d)
    m = y2.shape[0]
    ds = torch.empty_like(y2) if out is None else out.view(m, d)
    bm = _block_m(d)
    _bwd[_grid(m, bm)](dy2, y2, rstd, ds, m, d, BLOCK_M=bm, BLOCK_D=triton.next_power_of_2(d))
    return ds.view(y.shape)


# torch.library custom ops: opaque to torch.compile (fullgraph traces through them), autograd by
# register_autograd. Their bodies are the Triton launchers.
@torch.library.custom_op("tdrm::add_rmsnorm_fwd", mutates_args=())
def add_rmsnorm_fwd_op(x: torch.Tensor, r: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, rstd = add_rmsnorm_triton_fwd(x, r, eps)
    return y.contiguous(), rstd


@add_rmsnorm_fwd_op.register_fake
def _(x, r, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("tdrm::add_rmsnorm_bwd", mutates_args=())
def add_rmsnorm_bwd_op(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    return add_rmsnorm_triton_bwd(dy, y, rstd)


@add_rmsnorm_bwd_op.register_fake
def _(dy, y, rstd):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*output)
    ctx.r_dtype = inputs[1].dtype


def _backward(ctx, dy, _drstd):
    y, rstd = ctx.saved_tensors
    ds = add_rmsnorm_bwd_op(dy, y, rstd)
    return ds, ds.to(ctx.r_dtype), None


add_rmsnorm_fwd_op.register_autograd(_backward, setup_context=_setup)


def add_rmsnorm_triton(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The Triton path with autograd (what `add_rmsnorm` runs on CUDA)."""
    return add_rmsnorm_fwd_op(x, r, eps)[0]


def add_rmsnorm(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """rms_norm(x + r): the Triton kernel on CUDA (or when forced), the reference elsewhere."""
    if use_triton(x):
        return add_rmsnorm_triton(x, r, eps)
    return add_rmsnorm_reference(x, r, eps)
