import json

import numpy as np
import pytest

from tdrm.config import Data, Splits
from tdrm.data.augment import canonical
from tdrm.data.board import is_solution
from tdrm.data.dataset import build, load_split, split_by_class

from ..conftest import FIXTURES


def test_split_by_class_keeps_classes_apart():
    keys = ["a", "a", "b", "c", "c", "c", "d", "e", "f"]
    idx = split_by_class(keys, {"train": 4, "val": 1, "test": 2}, np.random.default_rng(0))
    seen = {s: {keys[i] for i in v} for s, v in idx.items()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"])
    assert not (seen["val"] & seen["test"])
    assert [len(idx[s]) for s in ("train", "val", "test")] == [4, 1, 2]


def test_split_too_small_is_an_error():
    with pytest.raises(ValueError, match="equivalence classes"):
        split_by_class(["a", "a", "a"], {"train": 1, "val": 1, "test": 1}, np.random.default_rng(0))


def test_generated_build_writes_disjoint_splits_and_meta(tmp_path):
    cfg = Data(size=6, count=60, splits=Splits(train=40, val=8, test=8), num_aug=2, seed=3)
    meta = build(cfg, tmp_path, progress=False)
    assert meta["counts"]["train"] == {"puzzles": 120, "base_puzzles": 40}
    assert json.loads((tmp_path / "meta.json").read_text())["board"] == "6x6"
    train, test = load_split(tmp_path, "train"), load_split(tmp_path, "test")
    assert all(is_solution(p, s, train.shape) for p, s in zip(train.puzzles, train.solutions))
    tr = {canonical(p, train.shape) for p in train.puzzles}
    assert not tr & {canonical(p, test.shape) for p in test.puzzles}
    # same params, same bytes
    build(cfg, tmp_path / "again", progress=False)
    assert (tmp_path / "again" / "train.npz").read_bytes() == (tmp_path / "train.npz").read_bytes()


def test_file_build_records_sources_with_sha256(tmp_path):
    cfg = Data(source="files", files=(str(FIXTURES / "hard9.csv"),), subsample=12,
               splits=Splits(train=8, val=2, test=2))
    meta = build(cfg, tmp_path, progress=False)
    assert meta["sources"][0]["rows"] == 20 and len(meta["sources"][0]["sha256"]) == 64
    assert meta["counts"]["test"]["puzzles"] == 2


def test_missing_split_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npz"):
        load_split(tmp_path, "train")
