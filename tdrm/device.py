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


AMP = ("none", "bf16")


def check_amp(name: str) -> bool:
    """`common.amp`: none (fp32) or bf16 (torch.autocast with bfloat16 around the training forward,
    the reference's GPU setting); returns whether autocast is on."""
    if name not in AMP:
        raise ValueError(f"common.amp must be one of {AMP}, got {name!r}")
    return name == "bf16"
