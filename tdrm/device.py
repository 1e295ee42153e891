"""Device selection: the library never hard-codes one."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def maybe_compile(fn, enabled: bool):
    """`torch.compile(fn)` (static shapes: a new batch shape compiles once more) when enabled,
    else fn itself. Compiled code changes floating-point rounding, not the maths."""
    return torch.compile(fn, dynamic=False) if enabled else fn
