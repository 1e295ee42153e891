import json

import pytest

from tdrm.cli import main

from .conftest import FIXTURES, tiny_teacher


def test_solve_prints_grid_and_rating(capsys):
    q = "..3.2.6..9..3.5..1..18.64....81.29..7.......8..67.82....26.95..8..2.3..9..5.1.3.."
    assert main(["solve", q]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 8 3 | 9 2 1 | 6 5 7") and "unique: True" in out


def test_bad_puzzle_is_a_clear_error(capsys):
    assert main(["solve", "12x"]) == 2
    assert "16, 36 or 81" in capsys.readouterr().err


def test_rate_writes_csv(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["rate", "--puzzles", str(FIXTURES / "se_sample.txt"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "source,question,answer,rating" and len(lines) == 9


def test_eval_missing_checkpoint(capsys):
    assert main(["eval", "--checkpoint", "nope.pt", "--puzzles", str(FIXTURES / "hard9.csv")]) == 2
    assert "checkpoint not found: nope.pt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny_teacher(d, 20)
    return d


def test_eval_writes_json_and_rejects_size_mismatch(tiny_ckpt, tmp_path, capsys):
    from tdrm.data.dataset import load_split
    from tdrm.data.loaders import write_csv
    write_csv(tmp_path / "test.csv", load_split(tiny_ckpt, "test"))
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(tiny_ckpt / "t.pt"), "--puzzles", str(tmp_path / "test.csv"),
                 "--out", str(out), "--limit", "10", "--batch-size", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 10 and len(res["ci95"]) == 2 and len(res["per_step_exact_accuracy"]) == 3
    assert "exact accuracy" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tiny_ckpt / "t.pt"), "--puzzles", str(FIXTURES / "hard9.csv")]) == 2
    assert "size mismatch" in capsys.readouterr().err


def test_solve_with_checkpoint_prints_each_step(tiny_ckpt, capsys):
    main(["solve", "1.3..4.....2.1..", "--checkpoint", str(tiny_ckpt / "t.pt")])
    out = capsys.readouterr().out
    assert "step 1:" in out and "step 3:" in out


def test_bench_prints_tables(capsys, tmp_path):
    from tdrm.cli import bench_main

    from .conftest import ROOT
    assert bench_main(["trm", "--params", str(ROOT / "params.yaml"), "--profiles", "tiny", "--steps", "2",
                       "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "train_samples_x_steps_per_s" in out and "| tiny" in out
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["batch"] == 64
    assert bench_main(["solver", "--file", str(FIXTURES / "hard9.csv")]) == 0
    out = capsys.readouterr().out
    assert "median_ms" in out and "| 20 " in out
    assert bench_main(["solver", "--file", str(FIXTURES / "hard9.csv"), "--workers", "2"]) == 0
