"""Sharded, checksummed storage of teacher trajectories.

A traces directory holds `manifest.json` and, per shard i, one `.npy` file per field
(`shard-00000.y.npy`, ...). `.npy` is byte-deterministic, so the same teacher, data and seed give
byte-identical shards. bf16 is stored as its raw uint16 bits. The manifest lists counts, shapes,
dtype, projection and the sha256 of every file; while a run is in progress the manifest lists the
finished shards only (status `partial`), so a killed run resumes after the last finished shard.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMAT = "tdrm-traces-v1"


class TraceStoreError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    """Float tensor -> fp16 array, or bf16 bits as uint16."""
    if dtype == "fp16":
        return t.detach().to(torch.float16).cpu().numpy()
    if dtype == "bf16":
        return t.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    raise ValueError(f"traces.dtype must be fp16 or bf16, got {dtype!r}")


def from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored array -> float32 tensor."""
    if dtype == "bf16" and a.dtype == np.uint16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float()
    return torch.from_numpy(np.asarray(a)).float()


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class ShardWriter:
    """Writes shards in order; `done` tells which shards a previous (killed) run finished."""

    def __init__(self, out_dir: str | Path, header: dict):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.shards: list[dict] = []
        path = self.dir / MANIFEST
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("header") == header:
                # keep finished shards whose files are still intact
                for sh in old.get("shards", []):
                    if all((self.dir / f).is_file() and sha256_file(self.dir / f) == h
                           for f, h in sh["files"].items()):
                        self.shards.append(sh)
                    else:
                        break

    @property
    def done(self) -> int:
        return len(self.shards)

    def write(self, index: int, arrays: dict[str, np.ndarray], count: int) -> None:
        if index != len(self.shards):
            raise TraceStoreError(f"shard {index} written out of order (next is {len(self.shards)})")
        self.shards.append(write_shard_files(self.dir, index, arrays, count))
        self._manifest("partial")

    def close(self, extra: dict | None = None, shards: list[dict] | None = None) -> dict:
        """The complete manifest; `shards` (in index order) replaces the written list (a data-parallel
        recording, whose ranks wrote the shards, hands rank 0 all of them)."""
        if shards is not None:
            self.shards = list(shards)
        return self._manifest("complete", extra)

    def _manifest(self, status: str, extra: dict | None = None) -> dict:
        m = {"format": FORMAT, "status": status, "header": self.header, "shards": self.shards,
             "count": sum(s["count"] for s in self.shards), **(extra or {})}
        _write_json(self.dir / MANIFEST, m)
        return m


def write_shard_files(out_dir: Path, index: int, arrays: dict[str, np.ndarray], count: int) -> dict:
    """Write one shard's arrays (atomically, one .npy per field); returns its manifest entry."""
    files = {}
    for name, arr in arrays.items():
        fname = f"shard-{index:05d}.{name}.npy"
        tmp = out_dir / (fname + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        os.replace(tmp, out_dir / fname)
        files[fname] = sha256_file(out_dir / fname)
    return {"index": index, "count": int(count), "files": files}


def intact(out_dir: Path, entry: dict) -> bool:
    """Whether every file of a shard's manifest entry is present with its recorded sha256."""
    return all((out_dir / f).is_file() and sha256_file(out_dir / f) == h for f, h in entry["files"].items())


class TraceReader:
    """Reads a complete traces directory; every shard is checked against its sha256 when loaded."""

    def __init__(self, trace_dir: str | Path):
        self.dir = Path(trace_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise TraceStoreError(f"no traces manifest at {path}")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise TraceStoreError(f"{path} is not a {FORMAT} manifest")
        if self.manifest.get("status") != "complete":
            raise TraceStoreError(f"{self.dir} is incomplete (a recording run did not finish)")
        self.header = self.manifest["header"]
        self.shards = self.manifest["shards"]

    def __len__(self) -> int:
        return self.manifest["count"]

    def load_shard(self, i: int, fields: list[str] | None = None, verify: bool = True) -> dict[str, np.ndarray]:
        sh = self.shards[i]
        out = {}
        for fname, digest in sh["files"].items():
            name = fname.split(".")[1]
            if fields is not None and name not in fields:
                continue
            path = self.dir / fname
            if not path.is_file():
                raise TraceStoreError(f"missing shard file {path}")
            if verify and sha256_file(path) != digest:
                raise TraceStoreError(f"checksum mismatch in {path}: corrupted or truncated shard")
            try:
                out[name] = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise TraceStoreError(f"cannot read {path}: {e}") from None
        return out

    def batches(self, batch_size: int, rng: np.random.Generator, fields: list[str] | None = None,
                buffer_shards: int = 2):
        """Yield dicts of shuffled batches across shards, holding `buffer_shards` shards at a time."""
        order = rng.permutation(len(self.shards))
        pending: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(order), buffer_shards):
            for i in order[start:start + buffer_shards]:
                for k, v in self.load_shard(int(i), fields).items():
                    pending.setdefault(k, []).append(v)
            pool = {k: np.concatenate(v) for k, v in pending.items()}
            n = len(next(iter(pool.values())))
            perm = rng.permutation(n)
            full = n - n % batch_size if start + buffer_shards < len(order) else n
            for b in range(0, full, batch_size):
                idx = perm[b:b + batch_size]
                yield {k: v[idx] for k, v in pool.items()}
            pending = {k: [v[perm[full:]]] for k, v in pool.items()} if full < n else {}
