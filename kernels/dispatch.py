"""Where each op runs: the plain-torch reference, or the Triton kernel when asked for.

`TDRM_KERNELS` chooses the path: `auto` (default), `triton` (on CUDA, and on CPU tensors under
Triton's interpreter, `TRITON_INTERPRET=1`, set before triton is imported) or `torch`.

`auto` would run the Triton kernels on CUDA tensors, but they have only been tested under the
interpreter: until `kernels/gpu_check.sh` has passed on real hardware (recorded in
docs/RESULTS.md with the date, GPU and commit, and `GPU_CHECKED` set here), `auto` takes the
reference path on CUDA too and says once how to opt in (`TDRM_KERNELS=triton`).
"""
from __future__ import annotations

import os

import torch

MODES = ("auto", "triton", "torch")
GPU_CHECKED = False  # set True in the commit that records a passing kernels/gpu_check.sh run
_told = False


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
    if t.is_cuda and not GPU_CHECKED:
        _tell_once()
        return False
    return t.is_cuda


def _tell_once() -> None:
    global _told
    if not _told:
        _told = True
        import sys
        print("tdrm kernels: the Triton kernels have not passed kernels/gpu_check.sh on a GPU yet, so "
              "TDRM_KERNELS=auto runs the plain-torch path on CUDA; set TDRM_KERNELS=triton to use them",
              file=sys.stderr)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
