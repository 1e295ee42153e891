"""Where each op runs: the Triton kernel on CUDA tensors, the plain-torch reference elsewhere.

`TDRM_KERNELS` forces a path: `auto` (default), `triton` (also on CPU tensors, which needs
Triton's interpreter, `TRITON_INTERPRET=1`, set before triton is imported) or `torch`.
"""
from __future__ import annotations

import os

import torch

MODES = ("auto", "triton", "torch")


def mode() -> str:
    m = os.environ.get("TDRM_KERNELS", "auto")
    if m not in MODES:
        raise ValueError(f"TDRM_KERNELS must be one of {MODES}, got {m!r}")
    return m


def use_triton(t: torch.Tensor) -> bool:
    m = mode()
    if m == "torch":
        return False
    if m == "triton":
        return True
    return t.is_cuda


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
