import numpy as np
import pytest

from tdrm.data.board import SHAPES, is_solution
from tdrm.data.generate import generate, generate_many
from tdrm.data.solver import count_solutions


@pytest.mark.parametrize("cells", [16, 36])
def test_minimal_puzzles_are_unique_and_minimal(cells):
    s = SHAPES[cells]
    p, sol = generate(s, np.random.default_rng(1), "minimal")
    assert is_solution(p, sol, s)
    assert count_solutions(p, s) == 1
    for i in np.flatnonzero(p):  # removing any clue breaks uniqueness
        q = p.copy()
        q[i] = 0
        assert count_solutions(q, s) == 2


def test_target_clue_count_9x9():
    s = SHAPES[81]
    p, sol = generate(s, np.random.default_rng(0), "clues", clues=34)
    assert (p > 0).sum() <= 34 and count_solutions(p, s) == 1 and is_solution(p, sol, s)


def test_generation_is_seeded():
    a = generate_many(SHAPES[36], 5, seed=7)
    b = generate_many(SHAPES[36], 5, seed=7)
    c = generate_many(SHAPES[36], 5, seed=8)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode"):
        generate(SHAPES[16], np.random.default_rng(0), "fast")
    with pytest.raises(ValueError, match="clues"):
        generate(SHAPES[16], np.random.default_rng(0), "clues")
