import dataclasses

import numpy as np
import pytest
import torch

from tdrm.config import Traces
from tdrm.data.dataset import load_split
from tdrm.checkpoint import load_teacher
from tdrm.traces.record import projection_matrix, record
from tdrm.traces.store import TraceReader, TraceStoreError, from_numpy, to_numpy

from ..conftest import tiny_teacher

CFG = Traces(splits=("train", "val"), num_aug=1, limit=12, shard_size=10, batch=8)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    tiny_teacher(d, 20)
    model, _ = load_teacher(d / "t.pt")
    return model, d


def _files(path):
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*.npy"))}


def test_record_shapes_counts_and_decoding(teacher, tmp_path):
    model, d = teacher
    m = record(model, d / "t.pt", d, tmp_path, CFG, seed=0, device="cpu", progress=False)
    assert m["splits"]["train"]["puzzles"] == 24 and m["splits"]["val"]["puzzles"] == 12
    assert m["splits"]["train"]["shards"] == 3 and m["bytes_per_puzzle"] > 0
    r = TraceReader(tmp_path / "train")
    sh = r.load_shard(0)
    K, C, D = model.cfg.n_sup, 16, model.cfg.hidden
    assert sh["y"].shape == (10, K, C, D) and sh["z"].shape == (10, K, C, D) and sh["y"].dtype == np.float16
    assert sh["logits"].shape == (10, K, C, 6) and sh["q"].shape == (10, K) and sh["solved"].shape == (10, K)
    assert sh["aug"].tolist()[:4] == [0, 1, 0, 1] and sh["index"].tolist()[:4] == [0, 0, 1, 1]
    # the recorded originals are the split's puzzles, and the logits are the teacher's
    val = load_split(d, "val")
    assert np.array_equal(sh["puzzle"][0], load_split(d, "train").puzzles[0])
    tr = model.trace(torch.as_tensor(val.puzzles[:3].astype(np.int64) + 1))
    v = TraceReader(tmp_path / "val").load_shard(0)
    assert np.allclose(v["logits"][:3], tr.logits.movedim(1, 0).numpy(), atol=1e-2, rtol=1e-2)
    assert np.allclose(v["y"][:3].astype(np.float32), tr.y[:, :, 1:].movedim(1, 0).numpy(), atol=1e-2)


def test_same_seed_byte_identical_and_resume_after_kill(teacher, tmp_path, monkeypatch):
    model, d = teacher
    record(model, d / "t.pt", d, tmp_path / "a", CFG, seed=0, device="cpu", progress=False)
    from tdrm.traces import store
    real = store.ShardWriter.write

    def dying(self, index, arrays, count):
        if index == 2:
            raise KeyboardInterrupt("killed")
        return real(self, index, arrays, count)

    monkeypatch.setattr(store.ShardWriter, "write", dying)
    with pytest.raises(KeyboardInterrupt):
        record(model, d / "t.pt", d, tmp_path / "b", CFG, seed=0, device="cpu", progress=False)
    with pytest.raises(TraceStoreError, match="incomplete"):
        TraceReader(tmp_path / "b" / "train")
    monkeypatch.setattr(store.ShardWriter, "write", real)
    m = record(model, d / "t.pt", d, tmp_path / "b", CFG, seed=0, device="cpu", progress=False)
    assert m["splits"]["train"]["puzzles"] == 24
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    c = record(model, d / "t.pt", d, tmp_path / "c", dataclasses.replace(CFG, noise=0.1), seed=0,
               device="cpu", progress=False)
    assert c["puzzles"] == 36 and _files(tmp_path / "c") != _files(tmp_path / "a")


def test_corrupted_or_truncated_shard_is_named(teacher, tmp_path):
    model, d = teacher
    record(model, d / "t.pt", d, tmp_path, CFG, seed=0, device="cpu", progress=False)
    victim = tmp_path / "train" / "shard-00001.z.npy"
    victim.write_bytes(victim.read_bytes()[:-7])
    r = TraceReader(tmp_path / "train")
    r.load_shard(0)
    with pytest.raises(TraceStoreError, match="shard-00001.z.npy"):
        r.load_shard(1)


def test_streaming_reader_shuffles_across_shards_and_covers_everything(teacher, tmp_path):
    model, d = teacher
    record(model, d / "t.pt", d, tmp_path, CFG, seed=0, device="cpu", progress=False)
    r = TraceReader(tmp_path / "train")
    seen = []
    batches = list(r.batches(7, np.random.default_rng(0), fields=["index", "aug"], buffer_shards=2))
    for b in batches:
        seen += list(zip(b["index"].tolist(), b["aug"].tolist()))
    assert sorted(seen) == sorted((i, a) for i in range(12) for a in range(2))
    first = [tuple(x) for x in zip(batches[0]["index"], batches[0]["aug"])]
    assert first != sorted(first)  # shuffled


def test_inner_states_projection_and_bf16(teacher, tmp_path):
    model, d = teacher
    cfg = dataclasses.replace(CFG, splits=("val",), limit=4, inner=True, projection="orthogonal",
                              channels=8, dtype="bf16")
    record(model, d / "t.pt", d, tmp_path, cfg, seed=0, device="cpu", progress=False)
    sh = TraceReader(tmp_path / "val").load_shard(0)
    T, n, K = model.cfg.T, model.cfg.n, model.cfg.n_sup
    assert sh["z"].shape == (4, K, T * n, 16, 8) and sh["z"].dtype == np.uint16
    assert sh["y"].shape == (4, K, 16, 8)
    z = from_numpy(sh["z"], "bf16")
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    pca = dataclasses.replace(cfg, projection="pca", inner=False, dtype="fp16")
    record(model, d / "t.pt", d, tmp_path / "pca", pca, seed=0, device="cpu", progress=False)
    assert (tmp_path / "pca" / "projection.npy").exists()


def test_projection_matrix_is_orthonormal_and_checks_channels():
    mean, basis = projection_matrix(Traces(projection="orthogonal", channels=5), 12, seed=3)
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5) and not mean.any()
    with pytest.raises(ValueError, match="channels"):
        projection_matrix(Traces(projection="pca", channels=None), 12, seed=0)
    x = torch.randn(6, 3, dtype=torch.float32)
    assert torch.allclose(from_numpy(to_numpy(x, "bf16"), "bf16"), x, atol=2e-2)
