"""Dataset builder: puzzles from the generator or from files, split by equivalence class.

Output directory: `train.npz`, `val.npz`, `test.npz` (arrays `puzzles`, `solutions` (M, L) int8
with 0 = blank, `ratings` (M,) int32, `base` (M,) index of the un-augmented puzzle) and
`meta.json` (counts, board size, sources with sha256, params).
"""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import Data
from .augment import apply_transform, canonical, random_transform
from .board import Shape, shape_for_length, shape_for_n
from .generate import generate_many
from .loaders import PuzzleSet, load_puzzles, sha256
from .solver import solve
from ..paths import resolve_input
from ..rng import DATASET_SPLIT, stream

SPLITS = ("train", "val", "test")


def _canon_chunk(args):
    puzzles, shape = args
    return [canonical(p, shape) for p in puzzles]


def canonical_keys(puzzles: np.ndarray, shape: Shape, workers: int = 1, progress: bool = False) -> list[str]:
    chunks = [puzzles[i:i + 256] for i in range(0, len(puzzles), 256)]
    out: list[str] = []
    bar = tqdm(total=len(puzzles), desc="canonical forms", disable=not progress, mininterval=2)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for keys in pool.map(_canon_chunk, [(c, shape) for c in chunks]):
                out += keys
                bar.update(len(keys))
    else:
        for c in chunks:
            out += _canon_chunk((c, shape))
            bar.update(len(c))
    bar.close()
    return out


def split_by_class(keys: list[str], sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Assign whole equivalence classes to splits (test, then val, then train).

    Each split gets exactly its size unless the classes run out; one representative per class
    goes to test and val (duplicates there add nothing), every member to train.
    """
    classes: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        classes.setdefault(k, []).append(i)
    order = [classes[k] for k in sorted(classes)]
    perm = rng.permutation(len(order))
    out = {s: [] for s in SPLITS}
    it = iter(perm)
    for s in ("test", "val"):
        while len(out[s]) < sizes[s]:
            j = next(it, None)
            if j is None:
                break
            out[s].append(order[j][0])
    for j in it:
        if len(out["train"]) >= sizes["train"]:
            break
        room = sizes["train"] - len(out["train"])
        out["train"] += order[j][:room]
    for s in SPLITS:
        if len(out[s]) < sizes[s]:
            raise ValueError(f"only {len(out[s])} puzzles left for split {s!r} (asked {sizes[s]}); "
                             f"{len(order)} equivalence classes in {len(keys)} puzzles")
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def _collect(cfg: Data, rng: np.random.Generator, progress: bool) -> tuple[PuzzleSet, list[dict]]:
    need = cfg.splits.train + cfg.splits.val + cfg.splits.test
    if cfg.source == "generate":
        shape = shape_for_n(cfg.size)
        p, s = generate_many(shape, cfg.count, cfg.seed, cfg.mode, cfg.clues, progress=progress)
        ratings = np.array([solve(x, shape).guesses for x in p], dtype=np.int32)
        return (PuzzleSet(shape, p, s, ratings, [f"generated-{shape.name}-{cfg.mode}"] * len(p)),
                [{"generator": shape.name, "mode": cfg.mode, "clues": cfg.clues, "count": cfg.count}])
    if cfg.source != "files":
        raise ValueError(f"data.source must be 'generate' or 'files', got {cfg.source!r}")
    if not cfg.files:
        raise ValueError("data.source is 'files' but data.files is empty")
    sets, sources = [], []
    for f in cfg.files:
        f = resolve_input(f)
        ps = load_puzzles(f, skip_bad=cfg.skip_bad)
        if ps.skipped:
            print(f"{f}: skipped {ps.skipped} bad rows (first: {ps.errors[0]})")
        sets.append(ps)
        sources.append({"file": str(f), "sha256": sha256(f), "rows": len(ps), "skipped": ps.skipped})
    shapes = {s.shape for s in sets}
    if len(shapes) != 1:
        raise ValueError(f"data.files mix board sizes: {[s.name for s in shapes]}")
    allp = PuzzleSet(sets[0].shape, np.concatenate([s.puzzles for s in sets]),
                     np.concatenate([s.solutions for s in sets]),
                     np.concatenate([s.ratings for s in sets]),
                     sum((s.sources for s in sets), []))
    if cfg.subsample is not None:
        if cfg.subsample < need:
            raise ValueError(f"data.subsample={cfg.subsample} is smaller than the splits ({need})")
        if cfg.subsample < len(allp):
            allp = allp.take(np.sort(rng.choice(len(allp), cfg.subsample, replace=False)))
    return allp, sources


def build(cfg: Data, out_dir: str | Path, progress: bool = True) -> dict:
    """Build the dataset described by `cfg` into `out_dir`; returns the meta dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = stream(cfg.seed, DATASET_SPLIT)
    allp, sources = _collect(cfg, rng, progress)
    shape = allp.shape
    keys = canonical_keys(allp.puzzles, shape, cfg.workers, progress)
    idx = split_by_class(keys, asdict(cfg.splits), rng)
    counts = {}
    for s in SPLITS:
        part = allp.take(idx[s])
        p, q, r = part.puzzles, part.solutions, part.ratings
        base = np.arange(len(p))
        if s == "train" and cfg.num_aug > 0:
            ps, qs = [p], [q]
            for _ in tqdm(range(cfg.num_aug), desc="augment", disable=not progress, mininterval=2):
                tp, tq = np.empty_like(p), np.empty_like(q)
                for i in range(len(p)):
                    t = random_transform(shape, rng)
                    tp[i], tq[i] = apply_transform(p[i], shape, t), apply_transform(q[i], shape, t)
                ps.append(tp)
                qs.append(tq)
            p, q = np.concatenate(ps), np.concatenate(qs)
            r = np.tile(r, cfg.num_aug + 1)
            base = np.tile(base, cfg.num_aug + 1)
        np.savez_compressed(out_dir / f"{s}.npz", puzzles=p, solutions=q, ratings=r, base=base)
        counts[s] = {"puzzles": int(len(p)), "base_puzzles": int(len(idx[s]))}
    meta = {
        "board": shape.name, "n": shape.n, "box": [shape.r, shape.c], "cells": shape.cells,
        "vocab": shape.vocab, "counts": counts, "classes": len(set(keys)), "sources": sources,
        "params": {k: v for k, v in asdict(cfg).items() if k not in ("task", "arc")},  # what the Sudoku build reads
        "mean_givens": {s: float((np.load(out_dir / f"{s}.npz")["puzzles"] > 0).sum(1).mean())
                        for s in SPLITS},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_split(data_dir: str | Path, split: str) -> PuzzleSet:
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"dataset split not found: {path} (run the data stage first)")
    z = np.load(path)
    shape = shape_for_length(z["puzzles"].shape[1])
    return PuzzleSet(shape, z["puzzles"], z["solutions"], z["ratings"], [split] * len(z["puzzles"]))


def load_meta(data_dir: str | Path) -> dict:
    return json.loads((Path(data_dir) / "meta.json").read_text())
