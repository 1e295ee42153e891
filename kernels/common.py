"""Pieces shared by the Triton kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting


@triton.jit
def dot(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """a @ b with fp32 accumulation. Triton's interpreter computes bf16 dots wrongly, so UPCAST
    (set only there) does them in fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


def dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PREC) for `dot` on inputs of `dtype`: fp32 inputs stay exact (no TF32)."""
    return interpreting() and dtype == torch.bfloat16, ("ieee" if dtype == torch.float32 else "tf32")
