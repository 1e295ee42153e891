import json

import pytest
import torch

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
                       "--denoiser", "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "train_samples_x_steps_per_s" in out and "| tiny" in out and "| denoiser step" in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["what"], r["batch"], r["compiled"]) for r in rows] == [("teacher step", 64, False),
                                                                      ("denoiser step", 32, False)]
    assert bench_main(["solver", "--file", str(FIXTURES / "hard9.csv")]) == 0
    out = capsys.readouterr().out
    assert "median_ms" in out and "| 20 " in out
    assert bench_main(["solver", "--file", str(FIXTURES / "hard9.csv"), "--workers", "2"]) == 0


@pytest.fixture(scope="module")
def tiny_tdrm(tmp_path_factory):
    """A tiny teacher, its traces and a 10-step TDRM checkpoint, with the test split as CSV."""
    from tdrm.data.dataset import load_split
    from tdrm.data.loaders import write_csv
    from tdrm.train.distill import train_distill

    from .conftest import tiny_params, tiny_traces
    d = tmp_path_factory.mktemp("cli_tdrm")
    teacher = tiny_traces(d, 20, limit=20)
    p = tiny_params({"distill": {"steps": 10, "eval_every": 0, "sample_steps": 3}})
    train_distill(p, d / "tr", teacher, d / "tdrm.pt", progress=False)
    write_csv(d / "test.csv", load_split(d, "test"))
    return d


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, naming the problem
    return err


@pytest.mark.parametrize("args,msg", [
    (["--steps", "0"], "--steps must be >= 1, got 0"), (["--steps", "-1"], "--steps must be >= 1, got -1"),
    (["--samples", "0"], "--samples must be >= 1, got 0"), (["--limit", "0"], "--limit must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta applies to the ddim sampler"),
    (["--eta", "-0.1"], "--eta must be >= 0"),
    (["--spacing", "0"], "--spacing must be > 0"),
])
def test_eval_refuses_meaningless_tdrm_options(tiny_tdrm, capsys, args, msg):
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", str(tiny_tdrm / "test.csv"),
                 *args]) == 2
    assert msg in _err(capsys)


def test_eval_records_what_ran(tiny_tdrm, tmp_path):
    """ddpm is recorded at eta 1 (what it runs); --raw loads the raw weights, not the EMA."""
    import torch

    from tdrm.checkpoint import load_tdrm
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", str(tiny_tdrm / "test.csv"),
                 "--sampler", "ddpm", "--limit", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["sampler"] == "ddpm" and res["eta"] == 1.0 and res["steps"] == 3 and res["weights"] == "ema"
    ema, raw = load_tdrm(tiny_tdrm / "tdrm.pt")[0], load_tdrm(tiny_tdrm / "tdrm.pt", ema=False)[0]
    ck = torch.load(tiny_tdrm / "tdrm.pt", weights_only=False)
    assert all(torch.equal(v, ck["model"][k]) for k, v in raw.state_dict().items())
    assert any(not torch.equal(v, ck["model"][k]) for k, v in ema.state_dict().items())
    assert res["spacing"] == ck["config"]["distill"]["spacing"]  # the checkpoint's
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", str(tiny_tdrm / "test.csv"),
                 "--spacing", "0.7", "--limit", "5", "--out", str(out)]) == 0
    assert res["spacing"] != 0.7 and json.loads(out.read_text())["spacing"] == 0.7  # the override is what ran


def test_eval_and_solve_refuse_the_wrong_kind_of_checkpoint(tiny_tdrm, capsys):
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "t.pt"), "--puzzles", str(tiny_tdrm / "test.csv"),
                 "--sampler", "ddim", "--samples", "2"]) == 2
    assert "--sampler --samples apply to TDRM checkpoints" in _err(capsys)
    assert main(["solve", "1.3..4.....2.1..", "--checkpoint", str(tiny_tdrm / "tdrm.pt")]) == 2
    assert "holds a 'tdrm' model, not a TRM teacher" in _err(capsys)


def test_eval_reports_corrupted_checkpoints_and_malformed_puzzles(tiny_tdrm, tmp_path, capsys):
    bad = tmp_path / "cut.pt"
    bad.write_bytes((tiny_tdrm / "tdrm.pt").read_bytes()[:500])  # a truncated download
    assert main(["eval", "--checkpoint", str(bad), "--puzzles", str(tiny_tdrm / "test.csv")]) == 2
    assert "cannot read checkpoint" in _err(capsys)
    rows = (tiny_tdrm / "test.csv").read_text().splitlines()
    src, q, a, r = rows[1].split(",")
    malformed = tmp_path / "m.csv"
    malformed.write_text("\n".join([rows[0], f"{src},{q[:-1]}x,{a},{r}"]) + "\n")
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", str(malformed)]) == 2
    err = _err(capsys)
    assert "m.csv:2: bad character 'x'" in err
    short = tmp_path / "s.csv"
    short.write_text("\n".join([rows[0], f"{src},{q[:-3]},{a},{r}"]) + "\n")
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", str(short)]) == 2
    assert "s.csv" in _err(capsys)
    assert main(["solve", "1.3..4.....2.1.."[:-2]]) == 2
    assert "16, 36 or 81" in _err(capsys)


def test_bench_kernels_needs_cuda_or_a_small_cpu_smoke_run(capsys):
    from tdrm.cli import bench_main
    with pytest.raises(SystemExit) as e:
        bench_main(["kernels", "--device", "cpu"])
    assert e.value.code == 2 and "--small" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench_main(["kernels"]) == 0
        assert "no CUDA device" in capsys.readouterr().out


def test_eval_of_a_per_row_checkpoint_runs_and_records_its_lag(tiny_tdrm, tmp_path, capsys):
    """The default's recipe (per-row levels mixed with one shared level, sampled at lag 0.5): with no
    option `tdrm eval` samples at the checkpoint's lag, records it, and matches the library's call at
    that lag; --spacing is refused for it; a shared-level checkpoint records no lag."""
    import torch

    from tdrm.checkpoint import load_teacher, load_tdrm
    from tdrm.data.loaders import load_puzzles
    from tdrm.eval.tdrm import evaluate_tdrm
    from tdrm.train.distill import train_distill

    from .conftest import tiny_params
    teacher, _ = load_teacher(tiny_tdrm / "t.pt", torch.device("cpu"))
    p = tiny_params({"distill": {"steps": 10, "eval_every": 0, "sample_steps": 3, "row_noise": "independent",
                                 "shared_prob": 0.5, "row_lag": 0.5, "spacing": 1.0}})
    train_distill(p, tiny_tdrm / "tr", teacher, tmp_path / "rows.pt", progress=False)
    out, csv = tmp_path / "e.json", str(tiny_tdrm / "test.csv")
    assert main(["eval", "--checkpoint", str(tmp_path / "rows.pt"), "--puzzles", csv, "--limit", "20",
                 "--out", str(out)]) == 0
    assert "row_lag=0.5" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["row_lag"] == 0.5 and res["steps"] == 3 and res["spacing"] == 1.0
    model, codec, sched, _ = load_tdrm(tmp_path / "rows.pt")
    lib = evaluate_tdrm(model, codec, sched, load_puzzles(csv, limit=20), sampler="ddim", steps=3, eta=0.0,
                        samples=1, seed=0, batch_size=256)
    assert model.row_lag == 0.5 and res["exact_accuracy"] == lib["exact_accuracy"]
    assert res["valid_fraction"] == lib["valid_fraction"]
    assert main(["eval", "--checkpoint", str(tmp_path / "rows.pt"), "--puzzles", csv, "--spacing", "0.5"]) == 2
    assert "was trained with row_noise 'independent'" in _err(capsys)
    assert main(["eval", "--checkpoint", str(tiny_tdrm / "tdrm.pt"), "--puzzles", csv, "--limit", "5",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["row_lag"] is None
