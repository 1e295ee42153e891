import numpy as np
import pytest

from tdrm.data.board import (PuzzleError, SHAPES, conflicts, format_board, from_tokens, is_solution,
                             parse, pretty, shape_for_length, to_tokens, units)


@pytest.mark.parametrize("length,n,r,c", [(16, 4, 2, 2), (36, 6, 2, 3), (81, 9, 3, 3)])
def test_shape_inferred_from_length(length, n, r, c):
    s = shape_for_length(length)
    assert (s.n, s.r, s.c, s.cells, s.vocab) == (n, r, c, length, n + 2)


def test_units_of_6x6_boxes_are_2_rows_by_3_cols():
    s = SHAPES[36]
    u = units(s)
    assert len(u) == 18 and all(len(x) == 6 for x in u)
    assert u[12] == [0, 1, 2, 6, 7, 8]  # first box: rows 0-1, cols 0-2
    assert u[13] == [3, 4, 5, 9, 10, 11]


def test_parse_and_format_roundtrip_with_both_blank_symbols():
    text = "1.3." + "0" * 12
    b = parse(text)
    assert b.tolist()[:4] == [1, 0, 3, 0] and b.dtype == np.int8
    assert format_board(b) == "1.3." + "." * 12


@pytest.mark.parametrize("text,msg", [("1" * 15, "16, 36 or 81"), ("5" + "." * 15, "bad character '5'"),
                                      ("x" + "." * 80, "bad character 'x'")])
def test_parse_rejects_bad_input_with_a_named_problem(text, msg):
    with pytest.raises(PuzzleError, match=msg):
        parse(text)


def test_tokens_follow_trm_convention():
    b = np.array([0, 1, 4, 0], dtype=np.int8)
    t = to_tokens(b)
    assert t.tolist() == [1, 2, 5, 1]
    assert from_tokens(np.array([0, 1, 2, 5])).tolist() == [0, 0, 1, 4]


def test_is_solution_checks_completeness_givens_and_units():
    sol = parse("1234341221434321")
    puzzle = parse("1...............")
    assert is_solution(puzzle, sol, SHAPES[16])
    assert not is_solution(parse("2..............."), sol, SHAPES[16])  # givens changed
    bad = sol.copy()
    bad[[0, 1]] = bad[[1, 0]]
    assert not is_solution(puzzle, bad, SHAPES[16])
    assert conflicts(bad, SHAPES[16])
    assert "|" in pretty(sol)


def test_valid_boards_is_the_batched_is_solution():
    """The one label-free validity check (reward, evaluation, best-of-N) agrees with the exact
    `is_solution` on solutions, swapped cells, changed givens and out-of-range digits."""
    import torch

    from tdrm.data.board import SHAPES, is_solution, parse, valid_boards
    rng = np.random.default_rng(0)
    sol = parse("1234341221434321")
    puz = parse("1...............")
    boards = [sol]
    for _ in range(30):
        b = sol.copy()
        i, j = rng.choice(16, 2, replace=False)
        b[[i, j]] = b[[j, i]]
        if rng.random() < 0.3:
            b[rng.integers(16)] = rng.choice([0, 5, -1])
        boards.append(b)
    boards.append(parse("2143432112343412"))  # a valid grid that changes the given
    got = valid_boards(torch.as_tensor(np.stack([puz] * len(boards))).long(),
                       torch.as_tensor(np.stack(boards)).long(), SHAPES[16]).tolist()
    want = [is_solution(puz, b, SHAPES[16]) for b in boards]
    assert got == want and got[0] and not got[-1] and not all(got[1:-1])
