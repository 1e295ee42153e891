import numpy as np
import pytest

from tdrm.data.augment import apply_transform, augment, canonical, random_transform
from tdrm.data.board import SHAPES, is_solution, parse
from tdrm.data.generate import generate
from tdrm.data.solver import solve

from ..conftest import FIXTURES


@pytest.mark.parametrize("cells", [16, 36, 81])
def test_augmented_solution_valid_puzzle_still_unique(cells):
    s = SHAPES[cells]
    rng = np.random.default_rng(0)
    if cells == 81:
        import csv
        row = next(csv.DictReader(open(FIXTURES / "hard9.csv")))
        p, sol = parse(row["question"]), parse(row["answer"])
    else:
        p, sol = generate(s, rng)
    for _ in range(10):
        q, qs = augment(p, sol, s, rng)
        assert is_solution(q, qs, s)
        res = solve(q, s)
        assert res.unique and np.array_equal(res.solutions[0], qs)
        assert (q > 0).sum() == (p > 0).sum()


def test_transpose_only_for_square_boxes():
    rng = np.random.default_rng(0)
    assert not any(random_transform(SHAPES[36], rng)["transpose"] for _ in range(50))
    assert any(random_transform(SHAPES[81], rng)["transpose"] for _ in range(50))


def test_transforms_move_whole_bands():
    t = random_transform(SHAPES[36], np.random.default_rng(5))
    bands = [set(t["rows"][i:i + 2] // 2) for i in range(0, 6, 2)]
    assert all(len(b) == 1 for b in bands)  # rows of one band stay together
    stacks = [set(t["cols"][i:i + 3] // 3) for i in range(0, 6, 3)]
    assert all(len(b) == 1 for b in stacks)


@pytest.mark.parametrize("cells", [16, 36])
def test_canonical_form_is_invariant_and_separates(cells):
    s = SHAPES[cells]
    rng = np.random.default_rng(2)
    p, sol = generate(s, rng)
    key = canonical(p, s)
    for _ in range(20):
        assert canonical(apply_transform(p, s, random_transform(s, rng)), s) == key
    others = [canonical(generate(s, rng)[0], s) for _ in range(5)]
    # a different class has a different key; (in 4x4, a random other puzzle may share the class)
    if cells == 36:
        assert key not in others


def test_canonical_9x9_invariant_under_transpose_and_bands():
    import csv
    s = SHAPES[81]
    rows = list(csv.DictReader(open(FIXTURES / "hard9.csv")))[:2]
    a, b = parse(rows[0]["question"]), parse(rows[1]["question"])
    rng = np.random.default_rng(0)
    t = random_transform(s, rng)
    t["transpose"] = True
    assert canonical(apply_transform(a, s, t), s) == canonical(a, s)
    assert canonical(a, s) != canonical(b, s)
