"""Trajectory pictures (`tdrm plot trajectory`) and the offline report (`tdrm report`)."""
import base64
import json
import struct
from html.parser import HTMLParser

import numpy as np
import pytest

from tdrm.cli import main
from tdrm.data.board import SHAPES, format_board, parse
from tdrm.eval.plots import trajectory_png
from tdrm.eval.trajectory import BoardPath, figure_size
from tdrm.train.distill import train_distill

from ..conftest import tiny_params, tiny_traces
from ..tracking.conftest import make_runs

SOLUTION = parse("1234341221434321")
PUZZLE = parse("1.3..4.....2.1..")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG image"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    teacher = tiny_traces(d, 20, limit=40)
    p = tiny_params({"distill": {"steps": 10, "batch": 16, "eval_every": 0, "T": 50, "sample_steps": 3,
                                 "denoiser": {"hidden": 32, "layers": 2, "heads": 2}}})
    train_distill(p, d / "tr", teacher, d / "tdrm.pt", progress=False)
    return d


def test_trajectory_png_has_its_size_and_marks_errors(tmp_path):
    boards = np.stack([SOLUTION, SOLUTION, SOLUTION]).copy()
    boards[0, [1, 2]] = boards[0, [2, 1]]  # two wrong cells at step 1
    path = BoardPath(PUZZLE, SOLUTION, boards, np.full(boards.shape, 0.7), ["a", "b", "c"], SHAPES[16])
    # cell 1 (a blank) and cell 2 (the given 3, overwritten by the model) are both wrong
    assert path.errors().sum(1).tolist() == [2, 0, 0]
    w, h, dpi = figure_size(3)
    assert trajectory_png(path, tmp_path / "t.png") == (round(w * dpi), round(h * dpi)) == (660, 335)
    assert png_size((tmp_path / "t.png").read_bytes()) == (660, 335)
    many = BoardPath(PUZZLE, None, np.stack([SOLUTION] * 10), np.ones((10, 16)), [str(i) for i in range(10)], SHAPES[16])
    assert not many.errors().any()  # no solution: nothing marked
    assert trajectory_png(many, tmp_path / "m.png") == png_size((tmp_path / "m.png").read_bytes()) == (1760, 585)


def test_plot_trajectory_for_teacher_and_tdrm(ckpts, tmp_path, capsys):
    puzzle = format_board(PUZZLE)
    assert main(["plot", "trajectory", "--checkpoint", str(ckpts / "t.pt"), "--puzzle", puzzle,
                 "--png", str(tmp_path / "t.png")]) == 0
    assert png_size((tmp_path / "t.png").read_bytes()) == (660, 335)  # the tiny teacher's N_sup = 3 steps
    assert "3 boards" in capsys.readouterr().out
    assert main(["plot", "trajectory", "--checkpoint", str(ckpts / "tdrm.pt"), "--puzzle", puzzle,
                 "--png", str(tmp_path / "d.png")]) == 0
    assert png_size((tmp_path / "d.png").read_bytes()) == (660, 335)
    assert main(["plot", "trajectory", "--checkpoint", str(ckpts / "tdrm.pt"), "--puzzle", puzzle, "--over", "sampling",
                 "--steps", "5", "--png", str(tmp_path / "s.png")]) == 0
    assert png_size((tmp_path / "s.png").read_bytes()) == (1100, 335)  # one board per sampling step
    capsys.readouterr()
    assert main(["plot", "trajectory", "--checkpoint", str(ckpts / "t.pt"), "--puzzle", "1" + "." * 80,
                 "--png", str(tmp_path / "x.png")]) == 2
    assert "size mismatch" in capsys.readouterr().err
    assert main(["plot", "trajectory", "--checkpoint", str(ckpts / "t.pt"), "--puzzle", "12x4",
                 "--png", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_plot_curves_from_plot_csvs(tmp_path, capsys):
    a, b = tmp_path / "a_train.csv", tmp_path / "b_train.csv"
    a.write_text("step,loss,val_exact\n1,2.0,\n2,1.0,0.5\n")
    b.write_text("step,loss\n1,3.0\n2,1.5\n3,1.0\n")
    assert main(["plot", "curves", str(a), str(b), "--png", str(tmp_path / "c.png")]) == 0
    assert png_size((tmp_path / "c.png").read_bytes()) == (900, 320)  # loss and val_exact panels
    assert main(["plot", "curves", str(a), str(b), "--metric", "loss", "--png", str(tmp_path / "l.png")]) == 0
    assert png_size((tmp_path / "l.png").read_bytes()) == (450, 320)
    assert main(["plot", "curves", str(a), "--metric", "acc", "--png", str(tmp_path / "x.png")]) == 2
    assert "no column 'acc'" in capsys.readouterr().err


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_is_one_self_contained_page(ckpts, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    make_runs(runs)
    monkeypatch.setenv("TDRM_RUNS_DIR", str(runs))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "teacher.json").write_text(json.dumps({"exact_accuracy": 0.8125, "ci95": [0.7, 0.9]}))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "teacher_train.csv").write_text("step,lm_loss,val_exact\n1,2.0,\n2,1.0,0.5\n3,0.5,\n")
    out = tmp_path / "docs" / "report.html"
    assert main(["report", "--out", str(out), "--metrics", str(tmp_path / "metrics"), "--plots", str(tmp_path / "plots"),
                 "--data", str(ckpts), "--teacher", str(ckpts / "t.pt"), "--tdrm", str(ckpts / "tdrm.pt")]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "url(" not in text
    p = _Tags()
    p.feed(text)
    names = [t for t, _ in p.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) == 4  # the CSV's curves and three trajectory pictures (teacher, TDRM steps, TDRM sampling)
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        w, h = png_size(base64.b64decode(src.split(",", 1)[1]))
        assert w > 100 and h > 100
    for want in ("0.8125", "exp-lr", "INTERRUPTED", "DIED", "teacher.lr", "lm_loss"):
        assert want in text, want
    (tmp_path / "plots" / "bad.png").write_bytes(b"not a png")
    assert main(["report", "--out", str(out), "--plots", str(tmp_path / "plots"), "--data", str(tmp_path)]) == 2
    assert "bad.png: not a PNG image" in capsys.readouterr().err


def test_report_stage_same_inputs_same_bytes(ckpts, tmp_path, monkeypatch):
    """The `report` DVC stage reads only its declared inputs: twice on the same inputs gives the same
    bytes (no clock, no Sacred runs), and a changed metrics file changes the page."""
    from tdrm.pipeline.report import report_stage
    runs = tmp_path / "runs"
    runs.mkdir()
    make_runs(runs)
    monkeypatch.setenv("TDRM_RUNS_DIR", str(runs))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "teacher.json").write_text(json.dumps({"exact_accuracy": 0.8125}))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "teacher_train.csv").write_text("step,lm_loss\n1,2.0\n2,1.0\n")
    args = [str(tmp_path / "metrics"), str(tmp_path / "plots"), str(ckpts), str(ckpts / "t.pt"), str(ckpts / "tdrm.pt")]
    a, b = report_stage(*args, str(tmp_path / "a.html")), report_stage(*args, str(tmp_path / "b.html"))
    assert a.read_bytes() == b.read_bytes() and b"exp-lr" not in a.read_bytes()
    (tmp_path / "metrics" / "teacher.json").write_text(json.dumps({"exact_accuracy": 0.9375}))
    c = report_stage(*args, str(tmp_path / "c.html"))
    assert c.read_bytes() != a.read_bytes() and b"0.9375" in c.read_bytes()
