"""Checkpoint files: atomic writes, resume state, and loading any model back (teacher, TDRM),
with clear errors when a file is missing, unreadable or of the wrong kind."""
from __future__ import annotations

import os
from dataclasses import replace
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


def restore(path, key: dict, device, model, ema, opt, generator, world_size: int = 1) -> dict | None:
    """Load a resume checkpoint into model, EMA, optimizer and generator if it was written for
    the same `key` (config, seed, data); returns it (for the loop's own state) or None. A
    checkpoint of a run with another number of processes is refused (ValueError)."""
    if not path or not Path(path).is_file():
        return None
    ck = load(path, map_location=device)
    if ck.get("resume_key") != key:
        print(f"ignoring {path}: it belongs to another config or dataset")
        return None
    if ck.get("world_size", 1) != world_size:
        raise ValueError(f"{path} was written by a run of {ck.get('world_size', 1)} processes; resume it with "
                         f"the same number (dist.nproc x nodes), not {world_size}, or delete it to start afresh")
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"], ck["step"])
    opt.load_state_dict(ck["optimizer"])
    generator.set_state(ck["generator"])
    print(f"resuming from {path} at step {ck['step']}")
    return ck


def finish(save, out_path, resume_path, main: bool = True) -> None:
    """End of a training loop: `save(path, final=True)` to `out_path`, then drop the resume file
    (the file work on the main rank only; `save` is called on every rank, it may gather)."""
    save(Path(out_path), final=True)
    if main and resume_path and Path(resume_path).is_file():
        Path(resume_path).unlink()


def load_teacher(path: str | Path, device="cpu", ema: bool = True):
    """(model, checkpoint) with EMA weights by default; clear errors for bad files."""
    from .config import Model, section_from_dict
    from .models.trm import TRM

    ck = load(path, map_location=device)
    if ck.get("kind") != "teacher":
        raise CheckpointError(f"{path} holds a {ck.get('kind')!r} model, not a TRM teacher")
    model_cfg = section_from_dict(Model, ck["config"]["teacher"]["model"])
    meta = ck["data_meta"]
    model = TRM(model_cfg, meta["cells"], meta["vocab"]).to(device)
    model.load_state_dict(ck["ema"] if ema else ck["model"])
    model.eval()
    return model, ck


def check_size(ck: dict, cells: int, what: str) -> None:
    meta = ck["data_meta"]
    if meta["cells"] != cells:
        raise ValueError(f"size mismatch: the checkpoint was trained on {meta['board']} boards "
                         f"({meta['cells']} cells) but {what} has {cells}-cell puzzles")


def load_tdrm(path: str | Path, device="cpu", ema: bool = True):
    """(denoiser with EMA weights (raw weights with `ema=False`), codec (with the frozen teacher),
    schedule, checkpoint)."""
    from .config import Distill, Model, section_from_dict
    from .diffusion.schedules import make_schedule
    from .diffusion.trajectory import Codec, Layout, Standardizer
    from .models.denoiser import build_denoiser
    from .models.trm import TRM

    ck = load(path, map_location=device)
    if ck.get("kind") != "tdrm":
        raise CheckpointError(f"{path} holds a {ck.get('kind')!r} model, not a TDRM denoiser")
    dcfg = section_from_dict(Distill, ck["config"]["distill"])
    k, l, c = ck["shape"]
    tinfo = ck["teacher"]
    teacher = TRM(section_from_dict(Model, tinfo["config"]), tinfo["cells"], tinfo["vocab"]).to(device)
    teacher.load_state_dict(tinfo["model"])
    teacher.eval()
    # checkpoints written before states z / prefix positions existed carry no layout
    layout = Layout(**ck["layout"]) if "layout" in ck else Layout.of(dcfg.state, teacher.cfg,
                                                                     ck["traces_header"]["config"])
    stdz = Standardizer(ck["stats"]["mean"], ck["stats"]["std"])
    schedule = make_schedule(dcfg.schedule, dcfg.T, dcfg.shift, dcfg.spacing)
    # init teacher only seeds the weights; the checkpoint's own weights are loaded next
    model = build_denoiser(replace(dcfg, denoiser=replace(dcfg.denoiser, init="random")), k, l, c, tinfo["vocab"],
                           layout.prefix, teacher=teacher, stdz=stdz, schedule=schedule).to(device)
    model.load_state_dict(ck["ema" if ema else "model"])
    model.eval()
    codec = Codec(teacher, layout, stdz, ck["projection"])
    return model, codec, schedule, ck
