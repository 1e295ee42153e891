import numpy as np
import pytest

from tdrm.data.board import PuzzleError
from tdrm.data.loaders import load_puzzles, write_csv

from ..conftest import FIXTURES

GOOD = "..3.2.6..9..3.5..1..18.64....81.29..7.......8..67.82....26.95..8..2.3..9..5.1.3.."
ANS = "483921657967345821251876493548132976729564138136798245372689514814253769695417382"


def test_csv_fixture_loads():
    ps = load_puzzles(FIXTURES / "hard9.csv")
    assert len(ps) == 20 and ps.shape.n == 9 and ps.ratings[0] == 634


def test_list_format_solved_by_solver():
    ps = load_puzzles(FIXTURES / "se_sample.txt")
    assert len(ps) == 8 and (ps.ratings >= 0).all()
    assert ps.sources[0].startswith("se_sample:")
    assert np.all(ps.solutions > 0)


def _csv(tmp_path, *rows):
    p = tmp_path / "p.csv"
    p.write_text("source,question,answer,rating\n" + "\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("row,msg", [
    (f"x,{GOOD[:-1]},{ANS},0", "81 cells|16, 36 or 81"),
    (f"x,{GOOD[:-1]}a,{ANS},0", "bad character 'a'"),
    (f"x,33{GOOD[2:]},{ANS},0", "contradictory givens"),
    (f"x,{GOOD},{ANS[:-2]}28,0", "not a valid solution|does not match"),
    (f"x,{'.' * 81},{ANS},0", "several solutions|does not match"),
])
def test_bad_rows_name_file_line_and_problem(tmp_path, row, msg):
    path = _csv(tmp_path, f"ok,{GOOD},{ANS},0", row)
    with pytest.raises(PuzzleError, match=rf"p\.csv:3: .*({msg})"):
        load_puzzles(path, check_unique=True)


def test_no_solution_list_row(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("12..........3...\n" + "12" + "." * 8 + "3...4." + "\n")
    with pytest.raises(PuzzleError, match=r"l\.txt:1: puzzle has (no|several) solution"):
        load_puzzles(p)


def test_skip_bad_counts_rows(tmp_path):
    path = _csv(tmp_path, f"ok,{GOOD},{ANS},0", f"bad,{GOOD[:-1]},{ANS},0", f"ok2,{GOOD},{ANS},1")
    ps = load_puzzles(path, skip_bad=True)
    assert len(ps) == 2 and ps.skipped == 1 and "p.csv:3" in ps.errors[0]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_puzzles(tmp_path / "nope.csv")


def test_write_csv_roundtrip(tmp_path):
    ps = load_puzzles(FIXTURES / "se_sample.txt")
    write_csv(tmp_path / "out.csv", ps)
    back = load_puzzles(tmp_path / "out.csv", check_unique=True)
    assert np.array_equal(back.solutions, ps.solutions) and np.array_equal(back.ratings, ps.ratings)
