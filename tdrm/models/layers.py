"""Building blocks of the TRM network (METHOD.md section 1).

Shapes: B batch, L sequence (prefix + cells), D hidden, H heads, E head dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kernels.add_rmsnorm import add_rmsnorm
from kernels.attention import attention
from kernels.mlp_t import mlp_t
from kernels.swiglu import swiglu

# std of a standard normal truncated to [-2, 2]; dividing by it keeps the requested std
_TRUNC_STD = 0.8796256610342398


def trunc_normal_(t: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Truncated normal at +-2 std whose *actual* std is `std` (as TRM's init)."""
    with torch.no_grad():
        s = std / _TRUNC_STD
        return nn.init.trunc_normal_(t, 0.0, s, -2 * s, 2 * s, generator=generator)


def rms_norm(x: torch.Tensor, eps: float = 1e-5, dim: int = -1) -> torch.Tensor:
    """RMSNorm without gain, computed in fp32 (post-norm of every TRM sublayer)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.square().mean(dim, keepdim=True) + eps)
    return x.to(dtype)


class Linear(nn.Module):
    """Bias-free linear with truncated LeCun-normal init (std 1/sqrt(fan_in))."""

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator | None = None, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(d_out, d_in), 1 / math.sqrt(d_in), generator))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def swiglu_width(dim: int, expansion: float, multiple_of: int) -> int:
    w = round(expansion * dim * 2 / 3)
    return -(-w // multiple_of) * multiple_of


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with width round_up(2/3 * expansion * dim, multiple_of)."""

    def __init__(self, dim: int, expansion: float, multiple_of: int, generator=None):
        super().__init__()
        inter = swiglu_width(dim, expansion, multiple_of)
        # separate gate and up projections: a fused one's chunk() costs a cat in backward
        self.gate = Linear(dim, inter, generator)
        self.up = Linear(dim, inter, generator)
        self.down = Linear(inter, dim, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate(x), self.up(x)))  # silu(gate) * up, kernels.swiglu


def rope_tables(seq: int, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (L, E) for rotary embeddings over `seq` positions."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)  # (L, E/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, E)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    """Non-causal multi-head self-attention with optional RoPE."""

    def __init__(self, dim: int, heads: int, generator=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, generator)
        self.out = Linear(dim, dim, generator)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.heads)
        o = attention(q, k, v, rope=rope)  # (B, H, L, E); RoPE on q, k inside (kernels.attention)
        return self.out(rearrange(o, "b h l e -> b l (h e)"))


class Block(nn.Module):
    """Post-norm block: h = rms(h + mix(h)); h = rms(h + SwiGLU(h)), each residual add + RMSNorm
    one fused op (`kernels.add_rmsnorm`: Triton on CUDA, its plain-torch reference elsewhere);
    the whole MLP-t sublayer is one op too (`kernels.mlp_t`), attention is `kernels.attention`.

    `mix` is either attention over positions or MLP-t: a SwiGLU applied along the sequence
    axis (transpose, mix, residual + RMSNorm over the sequence axis, transpose back), as in
    TRM's mlp_t variant.
    """

    def __init__(self, dim: int, seq: int, mixer: str, heads: int, expansion: float,
                 multiple_of: int, eps: float, generator=None):
        super().__init__()
        self.mixer, self.eps = mixer, eps
        if mixer == "mlp_t":
            self.mix = SwiGLU(seq, expansion, multiple_of, generator)
        elif mixer == "attention":
            self.mix = Attention(dim, heads, generator)
        else:
            raise ValueError(f"model.mixer must be 'mlp_t' or 'attention', got {mixer!r}")
        self.mlp = SwiGLU(dim, expansion, multiple_of, generator)

    def forward(self, h: torch.Tensor, rope=None) -> torch.Tensor:
        if self.mixer == "mlp_t":  # fused: transpose, SwiGLU over L, residual, RMSNorm over L, back
            h = mlp_t(h, self.mix.gate.weight, self.mix.up.weight, self.mix.down.weight, self.eps)
        else:
            h = add_rmsnorm(h, self.mix(h, rope), self.eps)
        return add_rmsnorm(h, self.mlp(h), self.eps)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) steps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
