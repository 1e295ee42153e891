"""SwiGLU activation: a = silu(g) * u, elementwise, computed in fp32.

Backward with sigma = sigmoid(g) recomputed (nothing saved but the inputs):
dg = da * u * sigma * (1 + g * (1 - sigma)), du = da * g * sigma.
`swiglu_reference` is the spec; `swiglu` dispatches (kernels/dispatch.py).

Shapes: any, g and u equal; flattened to N elements, BLOCK elements per program.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .dispatch import use_triton

BLOCK = 1024


def swiglu_reference(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The spec (and the CPU path): exactly what `SwiGLU` computed before the kernel existed."""
    return F.silu(g) * u


@triton.jit
def _fwd(g_ptr, u_ptr, a_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
    a = g * tl.sigmoid(g) * u
    tl.store(a_ptr + offs, a.to(a_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd(da_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    da = tl.load(da_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    tl.store(dg_ptr + offs, (da * u * sig * (1.0 + g * (1.0 - sig))).to(dg_ptr.dtype.element_ty), mask=m)
    tl.store(du_ptr + offs, (da * g * sig).to(du_ptr.dtype.element_ty), mask=m)


def _check(g: torch.Tensor, u: torch.Tensor) -> None:
    if g.shape != u.shape or g.dtype != u.dtype:
        raise ValueError(f"swiglu needs gate and up of one shape and dtype, got {tuple(g.shape)} {g.dtype} "
                         f"and {tuple(u.shape)} {u.dtype}")


def swiglu_triton_fwd(g: torch.Tensor, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    _check(g, u)
    g, u = g.contiguous(), u.contiguous()
    a = torch.empty_like(g) if out is None else out
    n = g.numel()
    _fwd[(triton.cdiv(n, BLOCK),)](g, u, a, n, BLOCK=BLOCK)
    return a


def swiglu_triton_bwd(da: torch.Tensor, g: torch.Tensor, u: torch.Tensor,
                      out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    da, g, u = da.contiguous(), g.contiguous(), u.contiguous()
    dg, du = (torch.empty_like(g), torch.empty_like(u)) if out is None else out
    n = g.numel()
    _bwd[(triton.cdiv(n, BLOCK),)](da, g, u, dg, du, n, BLOCK=BLOCK)
    return dg, du


@torch.library.custom_op("tdrm::swiglu_fwd", mutates_args=())
def swiglu_fwd_op(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return swiglu_triton_fwd(g, u)


@swiglu_fwd_op.register_fake
def _(g, u):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


@torch.library.custom_op("tdrm::swiglu_bwd", mutates_args=())
def swiglu_bwd_op(da: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return swiglu_triton_bwd(da, g, u)


@swiglu_bwd_op.register_fake
def _(da, g, u):
    return (torch.empty_like(g, memory_format=torch.contiguous_format),
            torch.empty_like(u, memory_format=torch.contiguous_format))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, da):
    return swiglu_bwd_op(da, *ctx.saved_tensors)


swiglu_fwd_op.register_autograd(_backward, setup_context=_setup)


def swiglu_triton(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The Triton path with autograd (a torch.library custom op, opaque to torch.compile)."""
    _check(g, u)
    return swiglu_fwd_op(g, u)


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u: the Triton kernel on CUDA (or when forced), the reference elsewhere."""
    if use_triton(g):
        return swiglu_triton(g, u)
    return swiglu_reference(g, u)
