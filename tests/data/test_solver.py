import csv

import numpy as np
import pytest

from tdrm.data.board import PuzzleError, SHAPES, format_board, is_solution, parse
from tdrm.data.solver import random_solution, solve

from ..conftest import FIXTURES, SHARED


def test_solves_hard_fixture_to_listed_answer_and_rating():
    rows = list(csv.DictReader(open(FIXTURES / "hard9.csv")))
    assert len(rows) == 20
    for r in rows:
        res = solve(r["question"])
        assert res.unique
        assert format_board(res.solutions[0]) == r["answer"]
        assert res.guesses == int(r["rating"])


def test_sampled_shared_hard_puzzles():
    """A seeded sample of the whole file (the full check is `python -m tdrm.bench solver`)."""
    path = SHARED / "forum_hardest_11plus.csv"
    if not path.exists():
        pytest.skip("../shared data not present")
    rows = list(csv.DictReader(open(path)))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(rows), 30, replace=False):
        res = solve(rows[i]["question"])
        assert res.unique and format_board(res.solutions[0]) == rows[i]["answer"]


def test_detects_multiple_and_no_solutions():
    assert solve("." * 16).count == 2
    assert solve("." * 16, limit=5).count == 5
    # 1 and 2 fill the first row's box; the cell at (0, 2) then needs 3 or 4, but both are blocked
    no = parse("12..............")
    no[10], no[14] = 3, 4  # column 2 holds 3 and 4 below
    assert solve(no).count == 0


def test_contradictory_givens_raise():
    with pytest.raises(PuzzleError, match="contradictory"):
        solve("11" + "." * 14)


@pytest.mark.parametrize("cells", [16, 36, 81])
def test_random_solution_is_valid_and_seeded(cells):
    s = SHAPES[cells]
    a = random_solution(s, np.random.default_rng(3))
    b = random_solution(s, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert is_solution(np.zeros_like(a), a, s)
    assert not np.array_equal(a, random_solution(s, np.random.default_rng(4)))
