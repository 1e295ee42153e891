"""Record the teacher's latent trajectories (METHOD.md section 2) into sharded storage.

For each puzzle (training puzzles with `num_aug` seeded augmentations each, validation puzzles
as they are) the EMA teacher runs exactly N_sup supervision steps; per step k we keep y and z at
the cell positions (prefix optional), the logits, the halting logit and whether the grid is
solved. Channels can be projected (fixed seeded orthogonal matrix, or PCA fitted on a sample).
Augmentation and latent noise are seeded per (seed, split, puzzle, augmentation) and per shard,
so a resumed run writes the same bytes as an uninterrupted one.

Data parallel (`world` of several ranks, under torchrun): rank r records the shards whose index is
r modulo the world size and writes their files; each finished shard also leaves a small
`shard-NNNNN.done.json` (its manifest entry) so a killed run resumes shard by shard. Rank 0 gathers
the entries, writes the manifests and removes the .done files: the output equals the one-process
output byte for byte (at equal threads per process: matmul rounding depends on the thread count).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Traces
from ..data.augment import augment
from ..data.board import logits_to_digits, to_tokens
from ..data.dataset import load_split
from ..dist import SINGLE, World, all_gather_objects, barrier
from .store import MANIFEST, ShardWriter, intact, sha256_file, to_numpy, write_shard_files

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def projection_matrix(cfg: Traces, hidden: int, seed: int, sample: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean (D,), basis (D, C)) or None. `sample` (N, D) fits the PCA."""
    if cfg.projection == "none":
        return None
    c = cfg.channels
    if c is None or not 0 < c <= hidden:
        raise ValueError(f"traces.channels must be in 1..{hidden} for projection {cfg.projection!r}, got {c}")
    if cfg.projection == "orthogonal":
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(hidden, c, generator=g, dtype=torch.float64))
        return torch.zeros(hidden), q.float()  # (D,), (D, C) with orthonormal columns
    if cfg.projection == "pca":
        if sample is None:
            raise ValueError("PCA projection needs a sample of states")
        mean = sample.double().mean(0)
        _, _, vh = torch.linalg.svd(sample.double() - mean, full_matrices=False)
        return mean.float(), vh[:c].T.float().contiguous()  # (D,), (D, C)
    raise ValueError(f"traces.projection must be none, orthogonal or pca, got {cfg.projection!r}")


def _items(split: str, n_base: int, cfg: Traces) -> list[tuple[int, int]]:
    augs = 1 + (cfg.num_aug if split == "train" else 0)
    return [(i, a) for i in range(n_base) for a in range(augs)]


def _boards(ps, items, split_id: int, seed: int):
    p = np.empty((len(items), ps.puzzles.shape[1]), np.int8)
    s = np.empty_like(p)
    for j, (i, a) in enumerate(items):
        if a == 0:
            p[j], s[j] = ps.puzzles[i], ps.solutions[i]
        else:
            p[j], s[j] = augment(ps.puzzles[i], ps.solutions[i], ps.shape, np.random.default_rng([seed, split_id, i, a]))
    return p, s


def trace_arrays(model, tr, solved: torch.Tensor, cfg: Traces, proj, device) -> dict:
    """A teacher trace `tr` as shard arrays: y and z at the recorded positions (prefix optional,
    projected when `proj`), logits, halting logits and `solved` (K, B), each with the batch first."""
    start = 0 if cfg.prefix else model.cfg.prefix
    y = tr.y[..., start:, :]  # (K, B, L', D)
    z = (tr.z_inner if cfg.inner else tr.z)[..., start:, :]  # (K, [T*n,] B, L', D)
    if proj is not None:
        mean, basis = (t.to(device) for t in proj)
        y, z = (y - mean) @ basis, (z - mean) @ basis  # (..., C)
    y = y.movedim(1, 0)  # (B, K, L', C)
    z = z.movedim(-3, 0)  # (B, K, [T*n,] L', C)
    return {"y": to_numpy(y, cfg.dtype), "z": to_numpy(z, cfg.dtype),
            "logits": tr.logits.movedim(1, 0).to(torch.float16).cpu().numpy(),  # (B, K, C, V)
            "q": tr.q.T.float().cpu().numpy(),  # (B, K)
            "solved": solved.T.cpu().numpy()}


@torch.no_grad()
def _run(model, puzzles: np.ndarray, solutions: np.ndarray, cfg: Traces, proj, gen, device) -> dict:
    tokens = torch.as_tensor(to_tokens(puzzles), device=device)
    tr = model.trace(tokens, noise=cfg.noise, generator=gen, inner=cfg.inner)
    pred = logits_to_digits(tr.logits)  # (K, B, C) digits
    sol = torch.as_tensor(solutions, device=device).long()
    return trace_arrays(model, tr, (pred == sol).all(-1), cfg, proj, device)


def _done_path(split_dir: Path, si: int) -> Path:
    return split_dir / f"shard-{si:05d}.done.json"


def record(model, teacher_path: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: Traces,
           seed: int, device, progress: bool = True, world: World = SINGLE) -> dict:
    """Record every split in `cfg.splits` into `out_dir/<split>/`; returns summary metrics (the
    whole job's). `world`: this rank's place in a data-parallel job; rank 0 writes the manifests."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_hash = sha256_file(Path(teacher_path))
    hidden = model.cfg.hidden
    proj = None
    if cfg.projection == "pca":
        train = load_split(data_dir, "train")
        k = min(cfg.pca_sample, len(train))
        tr = model.trace(torch.as_tensor(to_tokens(train.puzzles[:k]), device=device))
        sample = torch.cat([tr.y, tr.z]).reshape(-1, hidden).cpu()  # (N, D)
        proj = projection_matrix(cfg, hidden, seed, sample)
    else:
        proj = projection_matrix(cfg, hidden, seed)
    if proj is not None and world.main:
        np.save(out_dir / "projection.npy", torch.cat([proj[0][None], proj[1].T]).numpy())  # row 0 = mean
    t0, total, summary = time.perf_counter(), 0, {}
    for split in cfg.splits:
        sid = SPLIT_IDS[split]
        ps = load_split(data_dir, split)
        n_base = len(ps) if cfg.limit is None else min(cfg.limit, len(ps))
        items = _items(split, n_base, cfg)
        header = {"split": split, "teacher_sha256": teacher_hash, "config": asdict(cfg), "seed": seed,
                  "board": ps.shape.name, "n_sup": model.cfg.n_sup, "hidden": hidden,
                  "channels": hidden if proj is None else cfg.channels, "items": len(items)}
        writer = ShardWriter(out_dir / split, header) if world.main else None
        barrier(world)  # the split's directory exists before any rank writes into it
        shards = range(0, len(items), cfg.shard_size)
        done = writer.done if not world.distributed else 0
        bar = tqdm(total=len(items), initial=min(done * cfg.shard_size, len(items)),
                   desc=f"traces {split}", disable=not progress or not world.main, mininterval=2)
        entries, arrays = {}, {}
        for si, start in enumerate(shards):
            if not world.distributed and si < writer.done:
                continue  # finished by an earlier run
            if world.distributed:
                if si % world.size != world.rank:
                    continue  # another rank's shard
                marker = _done_path(out_dir / split, si)
                if marker.is_file():
                    entry = json.loads(marker.read_text())
                    if entry.get("header") == header and intact(out_dir / split, entry["entry"]):
                        entries[si] = entry["entry"]  # finished by an earlier run of this job
                        continue
            chunk = items[start:start + cfg.shard_size]
            p, s = _boards(ps, chunk, sid, seed)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + sid * 10_007 + si)
            parts = [_run(model, p[b:b + cfg.batch], s[b:b + cfg.batch], cfg, proj, gen, device)
                     for b in range(0, len(chunk), cfg.batch)]
            arrays = {k: np.concatenate([x[k] for x in parts]) for k in parts[0]}
            arrays.update(puzzle=p, solution=s, index=np.array([i for i, _ in chunk], np.int64),
                          aug=np.array([a for _, a in chunk], np.int32))
            if world.distributed:
                entries[si] = write_shard_files(out_dir / split, si, arrays, len(chunk))
                _done_path(out_dir / split, si).write_text(json.dumps({"header": header, "entry": entries[si]}))
            else:
                writer.write(si, arrays, len(chunk))
            total += len(chunk)
            bar.update(len(chunk) * world.size)
        bar.close()
        shapes = {k: list(v.shape[1:]) for k, v in arrays.items()}
        if world.distributed:  # rank 0 gets every rank's entries (and shapes, from any rank that recorded)
            gathered = all_gather_objects((entries, shapes), world)
            entries = {si: e for part, _ in gathered for si, e in part.items()}
            shapes = next((sh for _, sh in gathered if sh), shapes)
            if not world.main:
                continue
        if world.distributed:
            for si in entries:
                _done_path(out_dir / split, si).unlink(missing_ok=True)
        extra = {"shapes": shapes if len(items) else {}}
        m = writer.close(extra, [entries[i] for i in sorted(entries)] if world.distributed else None)
        size = sum((out_dir / split / f).stat().st_size for sh in m["shards"] for f in sh["files"])
        summary[split] = {"puzzles": m["count"], "bytes": size, "shards": len(m["shards"]),
                          "manifest_sha256": sha256_file(out_dir / split / MANIFEST)}
    seconds = time.perf_counter() - t0
    total = sum(all_gather_objects(total, world)) if world.distributed else total
    barrier(world)
    if not world.main:
        return {"puzzles": total, "seconds": seconds}
    n_all = sum(v["puzzles"] for v in summary.values())
    size_all = sum(v["bytes"] for v in summary.values())
    top = {"format": "tdrm-traces-v1", "teacher_sha256": teacher_hash, "splits": summary,
           "projection": cfg.projection, "dtype": cfg.dtype}
    (out_dir / MANIFEST).write_text(json.dumps(top, indent=2, sort_keys=True) + "\n")
    return {"puzzles": n_all, "total_bytes": size_all, "bytes_per_puzzle": size_all / max(n_all, 1),
            "puzzles_per_second": total / max(seconds, 1e-9) if total else None, "seconds": seconds,
            "splits": summary}
