"""TRM's MLP-t mixer sublayer fused: mixing along the sequence axis with a SwiGLU, residual, and
RMSNorm over the sequence axis, for every (sample, feature) column of h:

    t = h[b, :, d]                                      (L,)
    out[b, :, d] = rms_norm(t + W_down (silu(W_gate t) * (W_up t)))

The unfused model transposes h (B, L, D) -> (B, D, L), runs three linears, the activation and the
add + RMSNorm, and transposes back. The forward kernel reads h through its strides (no transpose
copy), keeps the (rows, I) intermediate on chip one BLOCK_I chunk at a time, and writes the
normalised result straight into (B, L, D) layout. It is what every no-grad cycle and all of
evaluation run. The backward recomputes the intermediates through the unfused kernels (Triton
SwiGLU and add + RMSNorm, cuBLAS matmuls) and backpropagates by hand: activation memory of one
input per call. Both directions are torch.library custom ops, opaque to torch.compile.

`mlp_t_reference` is the spec (and the CPU path); `mlp_t` dispatches (kernels/dispatch.py).

Shapes: B batch, L sequence (positions), D features, I = SwiGLU width over L; weights
gate, up (I, L), down (L, I). A program handles BLOCK_R features of one sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from einops import rearrange

from .add_rmsnorm import add_rmsnorm_reference, add_rmsnorm_triton_bwd, add_rmsnorm_triton_fwd
from .common import dot as _dot
from .common import dot_flags
from .dispatch import use_triton
from .swiglu import swiglu_reference, swiglu_triton_bwd, swiglu_triton_fwd


def mlp_t_reference(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                    eps: float = 1e-5) -> torch.Tensor:
    """h (B, L, D) -> (B, L, D). The spec: the unfused sublayer, op for op as the model ran it."""
    t = rearrange(h, "b l d -> b d l")
    m = F.linear(swiglu_reference(F.linear(t, w_gate.to(t.dtype)), F.linear(t, w_up.to(t.dtype))),
                 w_down.to(t.dtype))
    return rearrange(add_rmsnorm_reference(t, m, eps), "b d l -> b l d")


@triton.jit
def _fwd(H, WG, WU, WD, OUT, RSTD, D, L, I, shb, shl, shd, sob, sol, sod, eps,
         BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr,
         UPCAST: tl.constexpr, PREC: tl.constexpr):
    pid_r, b = tl.program_id(0), tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # features (BR,)
    pos = tl.arange(0, BLOCK_L)  # sequence positions (BL,)
    rm, pm = r < D, pos < L
    io = tl.arange(0, BLOCK_I)
    x = tl.load(H + b * shb + r[:, None] * shd + pos[None, :] * shl,
                mask=rm[:, None] & pm[None, :], other=0.0)  # (BR, BL): h[b]^T rows
    acc = tl.zeros([BLOCK_R, BLOCK_L], tl.float32)
    for i0 in range(0, I, BLOCK_I):
        i = i0 + io
        im = i < I
        wmask = pm[:, None] & im[None, :]
        wg = tl.load(WG + i[None, :] * L + pos[:, None], mask=wmask, other=0.0)  # (BL, BI) = W_gate^T chunk
        wu = tl.load(WU + i[None, :] * L + pos[:, None], mask=wmask, other=0.0)
        g = _dot(x, wg, UPCAST, PREC)  # (BR, BI)
        u = _dot(x, wu, UPCAST, PREC)
        a = (g * tl.sigmoid(g) * u).to(x.dtype)
        wd = tl.load(WD + pos[None, :] * I + i[:, None], mask=im[:, None] & pm[None, :], other=0.0)  # (BI, BL)
        acc += _dot(a, wd, UPCAST, PREC)
    s = x.to(tl.float32) + acc.to(x.dtype).to(tl.float32)  # the down projection rounds to the dtype, as F.linear
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / L + eps)  # (BR,)
    y = s * rstd[:, None]
    tl.store(OUT + b * sob + r[:, None] * sod + pos[None, :] * sol, y.to(OUT.dtype.element_ty),
             mask=rm[:, None] & pm[None, :])
    tl.store(RSTD + b * D + r, rstd, mask=rm)


def mlp_t_triton_fwd(h, w_gate, w_up, w_down, eps=1e-5, out=None, block_r: int | None = None):
    """(out (B, L, D), rstd (B, D) fp32)."""
    b, length, d = h.shape
    inter = w_gate.shape[0]
    if w_gate.shape != (inter, length) or w_up.shape != (inter, length) or w_down.shape != (length, inter):
        raise ValueError(f"mlp_t over {length} positions needs gate, up ({inter}, {length}) and down "
                         f"({length}, {inter}); got {tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down.shape)}")
    wg, wu, wd = (w.to(h.dtype).contiguous() for w in (w_gate, w_up, w_down))
    o = torch.empty_like(h, memory_format=torch.contiguous_format) if out is None else out
    rstd = torch.empty(b, d, dtype=torch.float32, device=h.device)
    block_l = max(16, triton.next_power_of_2(length))
    br = block_r or (32 if block_l > 64 else 64)
    upcast, prec = dot_flags(h.dtype)
    _fwd[(triton.cdiv(d, br), b)](h, wg, wu, wd, o, rstd, d, length, inter, *h.stride(), *o.stride(), eps,
                                  BLOCK_R=br, BLOCK_L=block_l, BLOCK_I=32 if block_l > 64 else 64,
                                  UPCAST=upcast, PREC=prec,
                                  num_warps=4)
    return o, rstd


@torch.library.custom_op("tdrm::mlp_t_fwd", mutates_args=())
def mlp_t_fwd_op(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                 eps: float) -> torch.Tensor:
    return mlp_t_triton_fwd(h, w_gate, w_up, w_down, eps)[0]


@mlp_t_fwd_op.register_fake
def _(h, w_gate, w_up, w_down, eps):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


@torch.library.custom_op("tdrm::mlp_t_bwd", mutates_args=())
def mlp_t_bwd_op(dy: torch.Tensor, h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, d w_gate, d w_up, d w_down): the intermediates recomputed with the unfused kernels, then
    backpropagated by hand: ds = rms-backward(dy^T); dA = ds W_d; dW_d = ds^T A;
    (dG, dU) = swiglu-backward(dA); dt = ds + dG W_g + dU W_u; dW_g = dG^T t; dW_u = dU^T t; dh = dt^T."""
    dt_ = h.dtype
    wg, wu, wd = (w.to(dt_) for w in (w_gate, w_up, w_down))
    t = rearrange(h, "b l d -> b d l")
    g, u = F.linear(t, wg), F.linear(t, wu)  # (B, D, I)
    a = swiglu_triton_fwd(g, u)
    y, rstd = add_rmsnorm_triton_fwd(t, F.linear(a, wd), eps)  # (B, D, L)
    ds = add_rmsnorm_triton_bwd(rearrange(dy, "b l d -> b d l"), y, rstd)  # (B, D, L)
    da = ds @ wd  # (B, D, I)
    dg, du = swiglu_triton_bwd(da, g, u)
    dt = ds + dg @ wg + du @ wu  # (B, D, L)
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731  (B*D, .)
    return (rearrange(dt, "b d l -> b l d").contiguous(), (flat(dg).T @ flat(t)).to(w_gate.dtype),
            (flat(du).T @ flat(t)).to(w_up.dtype), (flat(ds).T @ flat(a)).to(w_down.dtype))


@mlp_t_bwd_op.register_fake
def _(dy, h, w_gate, w_up, w_down, eps):
    return (torch.empty_like(h, memory_format=torch.contiguous_format), torch.empty_like(w_gate),
            torch.empty_like(w_up), torch.empty_like(w_down))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.eps = inputs[4]


def _backward(ctx, dy):
    return (*mlp_t_bwd_op(dy, *ctx.saved_tensors, ctx.eps), None)


mlp_t_fwd_op.register_autograd(_backward, setup_context=_setup)


def mlp_t_triton(h, w_gate, w_up, w_down, eps: float = 1e-5) -> torch.Tensor:
    """The fused Triton path with autograd (a torch.library custom op, opaque to torch.compile)."""
    return mlp_t_fwd_op(h, w_gate, w_up, w_down, eps)


def mlp_t(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
          eps: float = 1e-5) -> torch.Tensor:
    """The MLP-t sublayer, h (B, L, D) -> (B, L, D): fused Triton on CUDA (or forced), reference elsewhere."""
    if use_triton(h):
        return mlp_t_triton(h, w_gate, w_up, w_down, eps)
    return mlp_t_reference(h, w_gate, w_up, w_down, eps)
