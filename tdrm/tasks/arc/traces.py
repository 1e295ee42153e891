"""The ARC teacher's latent trajectories as traces (issue 16 section 4), in the store format of
`tdrm/traces/record.py`, so that `distill` reads them as it reads Sudoku's.

What is recorded: the training rows of an `arc/dataset.py` set (every augmentation of every
training pair is already a row with its own puzzle id, so nothing is augmented here). The rows are
split by a seeded shuffle into `train` traces and `val` traces: a `VAL_FRACTION` share of the rows
(at least one) that the denoiser never trains on, which distillation's validation decodes. They are
rows the teacher trained on; what is held out from the teacher too is scored later, on the dev and
test tasks' test inputs (`arc/evaluate.py`). `traces.limit` caps the training rows (None = all).

Per row and supervision step k: y and z at the canvas positions (prefix optional), the teacher's
logits and halting logit, and whether its canvas is right at every position the label does not pad;
besides them the input canvas (`puzzle`, tokens), the label canvas (`solution`, tokens) and the
row's `puzzle_id` (the teacher's puzzle-embedding row, which the denoiser also reads). One process:
the data-parallel recording is Sudoku's.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...config import Traces
from ...rng import ARC_TRACES, stream
from ...traces.record import projection_matrix, trace_arrays
from ...traces.store import MANIFEST, ShardWriter, sha256_file
from .dataset import load_set
from .grids import PAD

VAL_FRACTION = 0.05


def split_rows(m: int, seed: int, limit: int | None) -> dict[str, np.ndarray]:
    """Row indices of the `train` and `val` traces: a seeded permutation of range(m), the first
    round(VAL_FRACTION m) (at least 1) to val, the rest (at most `limit`) to train, each sorted."""
    if m < 2:
        raise ValueError(f"ARC traces need at least 2 training rows (train and val), got {m}")
    order = stream(seed, ARC_TRACES).permutation(m)
    n_val = max(1, round(VAL_FRACTION * m))
    train = order[n_val:] if limit is None else order[n_val:n_val + limit]
    return {"train": np.sort(train), "val": np.sort(order[:n_val])}


@torch.no_grad()
def _run(model, inputs: np.ndarray, labels: np.ndarray, ids: np.ndarray, cfg: Traces, proj, gen, device) -> dict:
    tokens = torch.as_tensor(inputs.astype(np.int64), device=device)
    tr = model.trace(tokens, noise=cfg.noise, generator=gen, inner=cfg.inner,
                     puzzle_ids=torch.as_tensor(ids.astype(np.int64), device=device))
    pred = tr.logits.argmax(-1)  # (K, B, P) tokens
    lab = torch.as_tensor(labels.astype(np.int64), device=device)
    return trace_arrays(model, tr, ((pred == lab) | (lab == PAD)).all(-1), cfg, proj, device)


def record_arc(model, teacher_path: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: Traces, seed: int,
               device, progress: bool = True) -> dict:
    """Record the ARC set of `data_dir` into `out_dir/{train,val}/` (module docstring); returns summary
    metrics as `record` does. Resumes after the last finished shard of a killed run."""
    if cfg.num_aug or list(cfg.splits) != ["train", "val"]:
        raise ValueError(f"ARC traces take the set's rows as they are (its augmentations are rows already) into "
                         f"train and val: set traces.num_aug: 0 and traces.splits: [train, val], got num_aug "
                         f"{cfg.num_aug}, splits {list(cfg.splits)}")
    if cfg.projection == "pca":
        raise ValueError("traces.projection pca is fitted on Sudoku puzzles; for ARC use none or orthogonal")
    arc = load_set(data_dir)
    if model.cfg.puzzles != arc.puzzles:
        raise ValueError(f"{teacher_path} has {model.cfg.puzzles} puzzle embeddings, {data_dir} has {arc.puzzles} "
                         "puzzle ids: the teacher was not trained on this ARC set")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_hash = sha256_file(Path(teacher_path))
    proj = projection_matrix(cfg, model.cfg.hidden, seed)
    if proj is not None:
        np.save(out_dir / "projection.npy", torch.cat([proj[0][None], proj[1].T]).numpy())  # row 0 = mean
    rows = split_rows(len(arc.train.inputs), seed, cfg.limit)
    t0, total, summary = time.perf_counter(), 0, {}
    for split, idx in rows.items():
        header = {"split": split, "task": "arc", "version": arc.version, "teacher_sha256": teacher_hash,
                  "config": asdict(cfg), "seed": seed, "board": f"arc{arc.size}", "n_sup": model.cfg.n_sup,
                  "hidden": model.cfg.hidden, "channels": model.cfg.hidden if proj is None else cfg.channels,
                  "items": len(idx)}
        writer = ShardWriter(out_dir / split, header)
        bar = tqdm(total=len(idx), initial=min(writer.done * cfg.shard_size, len(idx)), desc=f"traces {split}",
                   disable=not progress, mininterval=2)
        arrays = {}
        for si, start in enumerate(range(0, len(idx), cfg.shard_size)):
            if si < writer.done:
                continue  # finished by an earlier run
            chunk = idx[start:start + cfg.shard_size]
            inp, lab, ids = arc.train.inputs[chunk], arc.train.labels[chunk], arc.train.puzzle_ids[chunk]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + (split == "val") * 10_007 + si)
            parts = [_run(model, inp[b:b + cfg.batch], lab[b:b + cfg.batch], ids[b:b + cfg.batch], cfg, proj, gen,
                          device) for b in range(0, len(chunk), cfg.batch)]
            arrays = {k: np.concatenate([x[k] for x in parts]) for k in parts[0]}
            arrays.update(puzzle=inp.astype(np.int8), solution=lab.astype(np.int8), puzzle_id=ids.astype(np.int32),
                          index=chunk.astype(np.int64), aug=np.zeros(len(chunk), np.int32))
            writer.write(si, arrays, len(chunk))
            total += len(chunk)
            bar.update(len(chunk))
        bar.close()
        m = writer.close({"shapes": {k: list(v.shape[1:]) for k, v in arrays.items()} if len(idx) else {}})
        size = sum((out_dir / split / f).stat().st_size for sh in m["shards"] for f in sh["files"])
        summary[split] = {"puzzles": m["count"], "bytes": size, "shards": len(m["shards"]),
                          "manifest_sha256": sha256_file(out_dir / split / MANIFEST)}
    seconds = time.perf_counter() - t0
    n_all = sum(v["puzzles"] for v in summary.values())
    size_all = sum(v["bytes"] for v in summary.values())
    top = {"format": "tdrm-traces-v1", "task": "arc", "teacher_sha256": teacher_hash, "splits": summary,
           "projection": cfg.projection, "dtype": cfg.dtype}
    (out_dir / MANIFEST).write_text(json.dumps(top, indent=2, sort_keys=True) + "\n")
    return {"puzzles": n_all, "total_bytes": size_all, "bytes_per_puzzle": size_all / max(n_all, 1),
            "puzzles_per_second": total / max(seconds, 1e-9) if total else None, "seconds": seconds,
            "splits": summary}
