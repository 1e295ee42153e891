"""ARC as arrays for a teacher with puzzle embeddings (issue 16: the `arc_tiny` / `arc_cpu` data).

`build` takes the training tasks of one data version whose every grid (demonstration and test,
input and output) fits a `size` x `size` canvas, and splits them by task with a seeded shuffle into
train / dev / test tasks. Every task is taken under the identity and `num_aug` random augmentations
(dihedral x colour permutation, de-duplicated by content, `data.augment_task`); each (task,
augmentation) is one puzzle id, a row of the teacher's puzzle-embedding table (`model.puzzles`),
named "task|aug" in `identifiers` so the augmentation is recovered from the id.

What trains (the reference's split, at task level): every pair of a train task, and only the
demonstration pairs of dev and test tasks, under every augmentation; with `translate`, each
training example sits at a random offset on the canvas (input and output the same offset). What is
scored: the test pairs of dev and test tasks, under every augmentation, at the origin, with the
true output kept in the task's own frame (`truths`); their outputs never enter training
(`source` records each training row's origin and the tests check it).

Shapes: M examples, P = size^2 canvas tokens (vocab 12: PAD 0, EOS 1, colours 2-11).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Task, augment_task, load
from .grids import decode, encode, invert_grid, parse_aug, translation
from ...rng import ARC_AUGMENT, ARC_SPLIT, ARC_TRANSLATE, stream

SPLITS = ("train", "dev", "test")
DEMO, TEST_PAIR = 0, 1  # `source` of a training row: a demonstration pair, or a train task's test pair


@dataclass
class Examples:
    """Rows of one split: canvases (M, P) int8, labels (M, P) int8 (held-out splits: -1, unknown to
    the model), puzzle ids (M,), and per row the task, the pair index and its `source` (training) or
    the test input's index (held-out)."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_ids: np.ndarray
    task: np.ndarray   # (M,) index into ArcSet.task_ids (train, then dev, then test tasks)
    pair: np.ndarray   # (M,) pair index within its list (demonstrations or tests)
    source: np.ndarray  # (M,) DEMO or TEST_PAIR for training rows; TEST_PAIR for held-out rows


@dataclass
class ArcSet:
    version: str
    size: int
    tasks: dict[str, list[str]]  # split -> task ids
    identifiers: list[str]  # puzzle id -> "task|aug"
    train: Examples
    held_out: dict[str, Examples]  # "dev", "test"
    truths: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)  # split -> task -> outputs

    @property
    def task_ids(self) -> list[str]:
        """Every task, train then dev then test: what `Examples.task` indexes."""
        return [t for s in SPLITS for t in self.tasks[s]]

    @property
    def puzzles(self) -> int:
        """Rows the teacher's puzzle-embedding table needs (`model.puzzles`)."""
        return len(self.identifiers)


def fits(task: Task, size: int) -> bool:
    return all(max(g.shape) <= size for p in (*task.train, *task.test) for g in (p.input, p.output) if g is not None)


def split_tasks(ids: list[str], fractions: tuple[float, float], seed: int) -> dict[str, list[str]]:
    """A seeded shuffle of task ids into train / dev / test, dev and test taking `fractions` of them
    (each at least one task when there are three or more)."""
    if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"dev and test fractions must be in (0, 1) and sum below 1, got {fractions}")
    if len(ids) < 3:
        raise ValueError(f"splitting by task needs at least 3 tasks, got {len(ids)}")
    order = stream(seed, ARC_SPLIT).permutation(sorted(ids)).tolist()
    n_dev, n_test = (max(1, round(f * len(ids))) for f in fractions)
    return {"dev": sorted(order[:n_dev]), "test": sorted(order[n_dev:n_dev + n_test]),
            "train": sorted(order[n_dev + n_test:])}


def build(version: str, size: int, num_aug: int, seed: int, fractions: tuple[float, float] = (0.1, 0.1),
          translate: bool = True, max_tasks: int | None = None) -> ArcSet:
    """The arrays of the module docstring (`max_tasks`: the first tasks by id, for tiny runs)."""
    tasks = {tid: t for tid, t in load(version)["train"].items() if fits(t, size)}
    if max_tasks is not None:
        tasks = {tid: tasks[tid] for tid in sorted(tasks)[:max_tasks]}
    split = split_tasks(list(tasks), fractions, seed)
    identifiers: list[str] = []
    rows = {s: {k: [] for k in ("inputs", "labels", "puzzle_ids", "task", "pair", "source")} for s in SPLITS}
    truths: dict[str, dict[str, list[np.ndarray]]] = {"dev": {}, "test": {}}
    rng = stream(seed, ARC_TRANSLATE)
    order = [(s, tid) for s in SPLITS for tid in split[s]]
    for ti, (s, tid) in enumerate(order):
        task = tasks[tid]
        if s != "train":
            truths[s][tid] = [p.output for p in task.test]
        for name, aug in augment_task(task, num_aug, stream(seed, ARC_AUGMENT, ti)):
            pid = len(identifiers)
            identifiers.append(f"{tid}|{name}")
            pairs = [(DEMO, i, p) for i, p in enumerate(aug.train)]
            if s == "train":
                pairs += [(TEST_PAIR, i, p) for i, p in enumerate(aug.test)]
            for src, i, p in pairs:  # training rows
                off = translation([p.input.shape, p.output.shape], rng, size) if translate else (0, 0)
                _add(rows["train"], encode(p.input, off, size), encode(p.output, off, size), pid, ti, i, src)
            if s != "train":
                for i, p in enumerate(aug.test):  # held-out rows: the input only
                    _add(rows[s], encode(p.input, (0, 0), size), None, pid, ti, i, TEST_PAIR)
    ex = {s: _examples(rows[s], size) for s in SPLITS}
    return ArcSet(version, size, split, identifiers, ex["train"], {"dev": ex["dev"], "test": ex["test"]}, truths)


def _add(r: dict, inp: np.ndarray, out: np.ndarray | None, pid: int, task: int, pair: int, source: int) -> None:
    r["inputs"].append(inp.reshape(-1))
    r["labels"].append(np.full(inp.size, -1) if out is None else out.reshape(-1))
    r["puzzle_ids"].append(pid)
    r["task"].append(task)
    r["pair"].append(pair)
    r["source"].append(source)


def _examples(r: dict, size: int) -> Examples:
    p = size * size
    arr = lambda k, dt, shape: np.asarray(r[k], dtype=dt).reshape(shape)  # noqa: E731
    return Examples(arr("inputs", np.int8, (-1, p)), arr("labels", np.int8, (-1, p)), arr("puzzle_ids", np.int32, (-1,)),
                    arr("task", np.int32, (-1,)), arr("pair", np.int32, (-1,)), arr("source", np.int8, (-1,)))


def invert_prediction(arc: ArcSet, puzzle_id: int, canvas: np.ndarray) -> np.ndarray:
    """A predicted canvas of an augmented held-out input, decoded and mapped back to its task's frame."""
    d, perm = parse_aug(arc.identifiers[int(puzzle_id)].split("|", 1)[1])
    grid = decode(canvas, arc.size)
    return invert_grid(grid, d, perm) if grid.size else grid


def save(arc: ArcSet, out_dir: str | Path) -> None:
    """out_dir/{train,dev,test}.npz and meta.json (task "arc", version, size, task split, identifiers, truths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s, ex in (("train", arc.train), *arc.held_out.items()):
        np.savez_compressed(out / f"{s}.npz", **{k: getattr(ex, k) for k in Examples.__dataclass_fields__})
    meta = {"task": "arc", "version": arc.version, "size": arc.size, "tasks": arc.tasks, "identifiers": arc.identifiers,
            "truths": {s: {t: [g.tolist() for g in gs] for t, gs in ts.items()} for s, ts in arc.truths.items()}}
    (out / "meta.json").write_text(json.dumps(meta))


def load_set(out_dir: str | Path) -> ArcSet:
    d = Path(out_dir)
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(f"{d}/meta.json is missing: not an ARC dataset directory (tdrm.tasks.arc.dataset.save)")
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("task") != "arc":
        raise ValueError(f"{d} holds {meta.get('task', 'sudoku')!r} data, not an ARC dataset directory")
    ex = {}
    for s in SPLITS:
        with np.load(d / f"{s}.npz") as z:
            ex[s] = Examples(**{k: z[k] for k in Examples.__dataclass_fields__})
    truths = {s: {t: [np.asarray(g) for g in gs] for t, gs in ts.items()} for s, ts in meta["truths"].items()}
    return ArcSet(meta["version"], meta["size"], meta["tasks"], meta["identifiers"], ex["train"],
                  {"dev": ex["dev"], "test": ex["test"]}, truths)
