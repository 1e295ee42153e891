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


def restore(path, key: dict, device, model, ema, opt, generator) -> dict | None:
    """Load a resume checkpoint into model, EMA, optimizer and generator if it was written for
    the same `key` (config, seed, data); returns it (for the loop's own state) or None."""
    if not path or not Path(path).is_file():
        return None
    ck = load(path, map_location=device)
    if ck.get("resume_key") != key:
        print(f"ignoring {path}: it belongs to another config or dataset")
        return None
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"], ck["step"])
    opt.load_state_dict(ck["optimizer"])
    generator.set_state(ck["generator"])
    print(f"resuming from {path} at step {ck['step']}")
    return ck


def finish(save, out_path, resume_path) -> None:
    """End of a training loop: `save(path, final=True)` to `out_path`, then drop the resume file."""
    save(Path(out_path), final=True)
    if resume_path and Path(resume_path).is_file():
        Path(resume_path).unlink()
