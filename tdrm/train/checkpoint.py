"""Atomic checkpoint files and clear errors when one is missing or unreadable."""
from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "tdrm-checkpoint-v1"


class CheckpointError(RuntimeError):
    pass


def save(path: str | Path, payload: dict) -> None:
    """Write to a temporary file, then rename: a kill mid-write never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a TDRM checkpoint (format {FORMAT!r} expected)")
    return ck
