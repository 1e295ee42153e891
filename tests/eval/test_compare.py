"""Paired test, FLOP counting and the teacher-vs-TDRM comparison of the evaluate stage."""
import json
import struct

import pytest
import torch

from tdrm.eval.metrics import mcnemar_exact


def test_mcnemar_exact_hand_cases():
    # 3 puzzles only the first solver gets, none only the second: p = 2 * (1/2)^3
    r = mcnemar_exact([True, True, True, False, True], [False, False, False, False, True])
    assert r == {"only_first": 3, "only_second": 0, "p_value": 0.25}
    # 1 vs 1 discordant: p = 2 * P[X <= 1 | n=2] = 2 * 3/4 -> capped at 1
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0
    # 10 vs 0: 2 / 1024
    assert mcnemar_exact([True] * 10, [False] * 10)["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar_exact([True], [True])["p_value"] == 1.0  # no discordant pairs
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])


def test_flops_counts_a_matmul():
    from tdrm.eval.tdrm import flops
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert flops(torch.mm, a, b) == 2 * 8 * 16 * 4


def test_cosine_per_step():
    from tdrm.eval.tdrm import cosine_per_step
    a = torch.randn(3, 2, 5, 4)
    b = a.clone()
    b[:, 1] = -b[:, 1]
    assert torch.allclose(cosine_per_step(a, b), torch.tensor([1.0, -1.0]), atol=1e-6)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_stages_distill_control_and_evaluate_compare(tiny_params_file, tmp_path):
    """traces -> distill -> distill_control -> evaluate with TDRM on the tiny profile."""
    from tdrm.pipeline import data_stage, distill_stage, evaluate_stage, teacher_stage, traces_stage
    d, s = str(tmp_path / "data"), str(tiny_params_file)
    data_stage(s, d, str(tmp_path / "m.json"))
    teacher_stage(s, d, str(tmp_path / "t.pt"), str(tmp_path / "mt.json"), str(tmp_path / "t.csv"),
                  resume_dir=str(tmp_path / "ck"))
    traces_stage(s, d, str(tmp_path / "t.pt"), str(tmp_path / "tr"), str(tmp_path / "mtr.json"))
    m = distill_stage(s, str(tmp_path / "tr"), str(tmp_path / "t.pt"), str(tmp_path / "tdrm.pt"),
                      str(tmp_path / "md.json"), str(tmp_path / "d.csv"), resume_dir=str(tmp_path / "ck"))
    assert m["steps"] == 60 and (tmp_path / "d.csv").read_text().startswith("step,mse,ce")
    mc = distill_stage(s, str(tmp_path / "tr"), str(tmp_path / "t.pt"), str(tmp_path / "k1.pt"),
                       str(tmp_path / "mk1.json"), str(tmp_path / "k1.csv"), final_only=True,
                       resume_dir=str(tmp_path / "ck"))
    assert mc["params"] > 0
    from tdrm.checkpoint import load_tdrm
    assert load_tdrm(tmp_path / "k1.pt")[0].K == 1 and load_tdrm(tmp_path / "tdrm.pt")[0].K == 3
    plots = tmp_path / "plots"
    evaluate_stage(s, d, str(tmp_path / "t.pt"), str(tmp_path / "me.json"), str(tmp_path / "e.csv"),
                   str(tmp_path / "tdrm.pt"), str(tmp_path / "k1.pt"), str(tmp_path / "mtdrm.json"), str(plots))
    from tdrm.pipeline.common import details_path
    r = json.loads(details_path(tmp_path / "mtdrm.json").read_text())
    teacher = json.loads(details_path(tmp_path / "me.json").read_text())
    assert r["n"] == 100 and r["teacher"]["exact_accuracy"] == teacher["exact_accuracy"]
    # the DVC metrics files hold the headline only, under the shared short keys
    head, t_head = (json.loads((tmp_path / f).read_text()) for f in ("mtdrm.json", "me.json"))
    r4 = lambda v: float(f"{v:.4g}")  # noqa: E731  (headline floats carry 4 significant digits)
    assert (head["exact"], head["ci_low"], head["ci_high"]) == (r["tdrm"]["exact_accuracy"], *map(r4, r["tdrm"]["ci95"]))
    assert head["teacher_exact"] == t_head["exact"] == teacher["exact_accuracy"]
    assert head["p_value"] == r4(r["paired_tdrm_vs_teacher"]["p_value"])
    assert head["control_exact"] == r["control_final_state_only"]["exact_accuracy"]
    assert all(not isinstance(v, (dict, list)) for v in [*head.values(), *t_head.values()])
    assert r["difference_points"] == pytest.approx(100 * (r["tdrm"]["exact_accuracy"] - teacher["exact_accuracy"]))
    pair = r["paired_tdrm_vs_teacher"]
    # the paired counts are the accuracy difference on the same 100 puzzles, and the p-value is the exact test's
    assert pair["only_first"] - pair["only_second"] == round(100 * (r["tdrm"]["exact_accuracy"] - teacher["exact_accuracy"]))
    from tdrm.eval.metrics import mcnemar_exact
    a = [True] * pair["only_first"] + [False] * pair["only_second"]
    assert pair["p_value"] == mcnemar_exact(a, [not x for x in a])["p_value"]
    assert [x["sampling_steps"] for x in r["accuracy_by_sampling_steps"]] == [1, 5]
    assert r["cost"]["tdrm_network_evals"] == 5 and r["cost"]["teacher_network_evals"] == 3 * 2 * 3
    assert r["cost"]["tdrm_flops"] > r["cost"]["denoiser_flops_per_call"] > 0 and r["cost"]["teacher_flops"] > 0
    assert len(r["tdrm"]["per_step_cosine_to_teacher"]) == 3 and "correct" not in r["tdrm"]
    assert r["best_of_n"]["samples"] == 2 and "control_final_state_only" in r
    # best of 2 at DDIM eta 0 reuses the main sample: a second chain only for its puzzles without a valid board
    assert r["best_of_n"]["network_evals_per_puzzle"] == pytest.approx(5 * (2 - r["tdrm"]["valid_fraction"]))
    assert _png_size(plots / "tdrm_steps.png") == (500, 350)
    assert _png_size(plots / "tdrm_per_step.png") == (500, 350)
    assert (plots / "tdrm_per_step.csv").read_text().splitlines()[0] == \
        "step,teacher_exact_accuracy,tdrm_exact_accuracy,cosine_to_teacher,board_agreement_with_teacher"
    # a TDRM distilled from another teacher is refused, by name
    from tdrm import checkpoint
    ck = checkpoint.load(tmp_path / "tdrm.pt")
    ck["teacher"]["model"]["lm_head.weight"] = ck["teacher"]["model"]["lm_head.weight"] + 1
    checkpoint.save(tmp_path / "other.pt", ck)
    with pytest.raises(checkpoint.CheckpointError, match="another teacher"):
        evaluate_stage(s, d, str(tmp_path / "t.pt"), str(tmp_path / "me.json"), str(tmp_path / "e.csv"),
                       str(tmp_path / "other.pt"), None, str(tmp_path / "mtdrm.json"), str(plots))


def test_best_of_n_takes_the_one_sample_run_as_its_first_sample(tmp_path, monkeypatch):
    """Best of N with `first` checks the one-sample run's boards as its first sample (no chain run
    for them) and draws the others after that run's draws in the seed's stream: here they are the
    boards a one-sample run over the puzzles listed twice gives its second half. A first result of
    other settings is refused."""
    import numpy as np
    import tdrm.eval.tdrm as ev
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.dataset import load_split
    from tdrm.train.distill import train_distill
    from tests.conftest import tiny_params, tiny_traces
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params({"distill": {"steps": 5, "eval_every": 0}}), tmp_path / "tr", teacher,
                  tmp_path / "tdrm.pt", progress=False)
    model, codec, sched, _ = load_tdrm(tmp_path / "tdrm.pt")
    test = load_split(tmp_path, "test")
    ps, twice = test.take(list(range(32))), test.take(list(range(32)) * 2)
    seen, calls = [], [0]
    real_generate = ev.generate

    def valid(puzzles, boards, shape):  # records every board checked; a check that depends on the draws
        seen.append(boards.clone())
        return boards[:, 0] % 2 == 0

    def counted(*a, **k):
        calls[0] += 1
        return real_generate(*a, **k)

    monkeypatch.setattr(ev, "valid_boards", valid)
    monkeypatch.setattr(ev, "generate", counted)
    common = dict(sampler="ddim", steps=3, eta=0.0, seed=0, batch_size=16)
    one = ev.evaluate_tdrm(model, codec, sched, ps, samples=1, **common)
    later = ev.evaluate_tdrm(model, codec, sched, twice, samples=1, **common)["boards"][32:]
    seen.clear()
    calls[0] = 0
    best = ev.evaluate_tdrm(model, codec, sched, ps, samples=2, first=one, **common)
    assert calls[0] == 2  # two batches of 16, one chain each: the second sample only
    first_ok, second_ok = one["boards"][:, 0] % 2 == 0, later[:, 0] % 2 == 0
    assert 0 < first_ok.sum() < 32  # some puzzles need the second sample, some do not
    # per batch: the first sample's boards (the one-sample run's), then the second sample's, of the
    # puzzles whose first board failed the check only
    want = []
    for h in (slice(0, 16), slice(16, 32)):
        want += [one["boards"][h].tolist(), later[h][~first_ok[h]].tolist()]
    assert [b.tolist() for b in seen] == want
    assert not np.array_equal(later, one["boards"])  # the second sample is a new draw
    assert best["valid_fraction"] == float((first_ok | second_ok).mean()) > float(first_ok.mean())
    assert np.array_equal(best["boards"], one["boards"])
    assert best["per_step_exact_accuracy_first_sample"] == one["per_step_exact_accuracy_first_sample"]
    for bad in ({"seed": 1}, {"batch_size": 8}, {"eta": 1.0}):
        with pytest.raises(ValueError, match="first-sample result is reused only"):
            ev.evaluate_tdrm(model, codec, sched, ps, samples=2, first=one, **{**common, **bad})
    import dataclasses
    with pytest.raises(ValueError, match="first-sample result is reused only"):  # another time spacing
        ev.evaluate_tdrm(model, codec, dataclasses.replace(sched, spacing=sched.spacing / 2), ps, samples=2,
                         first=one, **common)


def test_best_of_n_later_samples_run_only_unsolved_puzzles_with_the_whole_batch_draws(tmp_path, monkeypatch):
    """Best of 3 at DDIM eta 0.5 (a draw at every step): each later sample runs the chain only on
    the puzzles without a valid board yet, and their boards are exactly those of sampling the whole
    batch every time from the same generator (the old cost), so the seed's stream and the result
    are unchanged."""
    import torch
    import tdrm.eval.tdrm as ev
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.board import logits_to_digits, to_tokens
    from tdrm.data.dataset import load_split
    from tdrm.diffusion.sampling import generate
    from tdrm.train.distill import train_distill
    from tests.conftest import tiny_params, tiny_traces
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params({"distill": {"steps": 5, "eval_every": 0}}), tmp_path / "tr", teacher,
                  tmp_path / "tdrm.pt", progress=False)
    model, codec, sched, _ = load_tdrm(tmp_path / "tdrm.pt")
    ps = load_split(tmp_path, "test").take(list(range(24)))
    seen, rows = [], []
    monkeypatch.setattr(ev, "valid_boards", lambda p, b, shape: (seen.append(b.clone()), b[:, 0] % 2 == 0)[1])
    real_generate = ev.generate
    monkeypatch.setattr(ev, "generate", lambda m, tok, *a, **k: (rows.append(len(tok)), real_generate(m, tok, *a, **k))[1])
    common = dict(sampler="ddim", steps=3, eta=0.5, seed=0, batch_size=16)
    res = ev.evaluate_tdrm(model, codec, sched, ps, samples=3, **common)
    # the old cost: every puzzle sampled 3 times, the draws in batch order from one generator
    gen, want, kept_ok, want_rows = torch.Generator().manual_seed(0), [], [], []
    for sl in (slice(0, 16), slice(16, 24)):
        tokens = torch.as_tensor(to_tokens(ps.puzzles[sl]))
        ok = torch.zeros(len(tokens), dtype=torch.bool)
        for j in range(3):
            want_rows.append(len(tokens) if j == 0 else int((~ok).sum()))
            x = generate(model, tokens, sched, sampler="ddim", steps=3, eta=0.5, generator=gen,
                         confidence=codec.cell_confidence)
            boards = logits_to_digits(codec.teacher.lm_head(codec.step_y(x)))[:, -1]
            if j == 0 or not bool(ok.all()):  # no chain (and no check) once every board is valid
                want.append(boards if j == 0 else boards[~ok])
            ok |= boards[:, 0] % 2 == 0
        kept_ok.append(ok)
    assert [b.tolist() for b in seen] == [b.tolist() for b in want]
    assert rows == want_rows and sum(rows) < 3 * 24  # later samples: only the puzzles still without a valid board
    assert res["valid_fraction"] == float(torch.cat(kept_ok).float().mean())
    # the calls counted are the calls run: 3 per chain, averaged over the 24 puzzles
    assert res["network_evals_per_puzzle"] == pytest.approx(3 * sum(want_rows) / 24)
    assert res["network_evals_per_puzzle"] < res["network_evals_per_puzzle_max"] == 9


def test_board_agreement_with_teacher_counts_puzzles_whose_step_k_board_is_the_teachers(tmp_path, monkeypatch):
    """`per_step_board_agreement_with_teacher` at step k is the share of puzzles whose decoded
    board at step k is the teacher's decoded board at step k: here the reference states are the
    sample's own for the even puzzles and, for the odd ones, another trajectory at every second step."""
    import torch
    import tdrm.eval.tdrm as ev
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.dataset import load_split
    from tdrm.train.distill import train_distill
    from tests.conftest import tiny_params, tiny_traces
    teacher = tiny_traces(tmp_path, 30, 20)
    train_distill(tiny_params({"distill": {"steps": 5, "eval_every": 0}}), tmp_path / "tr", teacher,
                  tmp_path / "tdrm.pt", progress=False)
    model, codec, sched, _ = load_tdrm(tmp_path / "tdrm.pt")
    ps = load_split(tmp_path, "test").take(list(range(20)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn((20, model.K, model.L, model.C), generator=g)  # the "samples", fixed
    other = torch.randn((20, model.K, model.L, model.C), generator=g)
    y, y_other = codec.step_y(x), codec.step_y(other)  # (20, K, N, D)
    k = y.shape[1]
    ref = y.clone()
    ref[1::2, 1::2] = y_other[1::2, 1::2]  # odd puzzles: another trajectory at steps 2, 4, ...
    rows = iter([slice(0, 8), slice(8, 16), slice(16, 20)])
    monkeypatch.setattr(ev, "generate", lambda m, tok, *a, **kw: x[next(rows)])
    res = ev.evaluate_tdrm(model, codec, sched, ps, sampler="ddim", steps=3, eta=0.0, samples=1, seed=0,
                           batch_size=8, reference=ref)
    decode = lambda s: ev.logits_to_digits(codec.teacher.lm_head(s))  # noqa: E731
    assert bool((decode(y_other[1::2, 1::2]) != decode(y[1::2, 1::2])).any(-1).all())  # the other boards differ
    assert res["per_step_board_agreement_with_teacher"] == pytest.approx([1.0 if i % 2 == 0 else 0.5 for i in range(k)])


@pytest.fixture(scope="module")
def tiny_tdrm(tmp_path_factory):
    """A 5-step tiny TDRM and its data folder, shared by the chain-diagnosis tests (loaded afresh by each)."""
    from tdrm.train.distill import train_distill
    from tests.conftest import tiny_params, tiny_traces
    d = tmp_path_factory.mktemp("tiny_tdrm")
    teacher = tiny_traces(d, 30, 20)
    train_distill(tiny_params({"distill": {"steps": 5, "eval_every": 0}}), d / "tr", teacher, d / "tdrm.pt",
                  progress=False)
    return d


def _tiny_chain(d):
    """(model, codec, schedule, the first 40 test puzzles) of the `tiny_tdrm` folder."""
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.dataset import load_split
    model, codec, sched, _ = load_tdrm(d / "tdrm.pt")
    return model, codec, sched, load_split(d, "test").take(list(range(40)))


def test_chain_diagnosis_is_the_one_sample_evaluation_and_its_corrector(tiny_tdrm):
    """The bench samples once per checkpoint: the diagnosis's final boards are the one-sample
    evaluation's (same seed, several batches), and its corrector accuracy is the teacher's steps
    run from a separately generated chain of the same seed."""
    import numpy as np
    import tdrm.eval.tdrm as ev
    from tdrm.data.board import to_tokens
    model, codec, sched, ps = _tiny_chain(tiny_tdrm)
    one = ev.evaluate_tdrm(model, codec, sched, ps, sampler="ddim", steps=3, eta=0.0, samples=1, seed=7, batch_size=16)
    diag = ev.chain_diagnosis(model, codec, sched, ps, steps=3, seed=7, batch_size=16, corrector_steps=2)
    assert np.array_equal(diag["boards"], one["boards"]) and np.array_equal(diag["correct"], one["correct"])
    assert not np.array_equal(diag["boards"][:16], diag["boards"][16:32])  # distinct draws per batch
    gen, after = torch.Generator().manual_seed(7), []
    for i in range(0, 40, 16):
        tokens = torch.as_tensor(to_tokens(ps.puzzles[i:i + 16]))
        x = ev.generate(model, tokens, sched, sampler="ddim", steps=3, eta=0.0, generator=gen,
                        confidence=codec.cell_confidence)
        after.append(ev.teacher_corrected(codec, x, tokens, 2))  # (2, b, N)
    after = torch.cat(after, 1)  # (2, 40, N) the digits after 1 and 2 teacher steps
    assert not torch.equal(after[1, :20], after[1, 20:])
    ps.solutions[::2] = after[1, ::2].numpy()  # "solutions" the corrector reaches on the even puzzles
    want = (after == torch.as_tensor(ps.solutions).long()[None]).all(-1).float().mean(1)  # (2,) 0.5 at step 2
    diag = ev.chain_diagnosis(model, codec, sched, ps, steps=3, seed=7, batch_size=16, corrector_steps=2)
    assert want[1] >= 0.5 and diag["corrector_exact"] == pytest.approx(want.tolist())
    assert "corrector_exact" not in ev.chain_diagnosis(model, codec, sched, ps.take([0]), steps=3, seed=7)


def test_chain_diagnosis_board_agreement_with_the_teachers_steps(tiny_tdrm):
    """The bench's per-row agreement with the teacher's boards is `evaluate_tdrm`'s (from the
    teacher's states), and counts exactly the puzzles whose row k board is the given step k board."""
    import numpy as np
    import tdrm.eval.tdrm as ev
    from tdrm.data.board import logits_to_digits, to_tokens
    from tdrm.eval.compare import teacher_run
    model, codec, sched, ps = _tiny_chain(tiny_tdrm)
    t_res, t_y = teacher_run(codec.teacher, ps, 16, "cpu", model.K)
    assert t_res["step_boards"].shape == (40, model.K, ps.puzzles.shape[1])
    assert np.array_equal((t_res["step_boards"][:, -1] == ps.solutions).all(-1), t_res["correct"])
    one = ev.evaluate_tdrm(model, codec, sched, ps, sampler="ddim", steps=3, eta=0.0, samples=1, seed=7,
                           batch_size=16, reference=t_y)
    diag = ev.chain_diagnosis(model, codec, sched, ps, steps=3, seed=7, batch_size=16,
                              teacher_boards=t_res["step_boards"])
    assert diag["agreement_by_row"] == pytest.approx(one["per_step_board_agreement_with_teacher"])
    gen, rows = torch.Generator().manual_seed(7), []
    for i in range(0, 40, 16):  # the same chains: each row's board
        x = ev.generate(model, torch.as_tensor(to_tokens(ps.puzzles[i:i + 16])), sched, sampler="ddim", steps=3,
                        eta=0.0, generator=gen, confidence=codec.cell_confidence)
        rows.append(logits_to_digits(codec.step_logits(x)).to(torch.int8).numpy())  # (b, K, N)
    rows = np.concatenate(rows)
    boards = t_res["step_boards"].copy()
    boards[::2] = rows[::2]  # the teacher "agrees" on the even puzzles at every step
    boards[::4, 0] = (rows[::4, 0] % 4) + 1  # and not at step 1 of every fourth (a digit changed everywhere)
    want = (rows == boards).all(-1).mean(0)  # (K,)
    assert want[0] >= 0.25 and want[-1] >= 0.5 and want[0] < want[-1]
    diag = ev.chain_diagnosis(model, codec, sched, ps, steps=3, seed=7, batch_size=16, teacher_boards=boards)
    assert diag["agreement_by_row"] == pytest.approx(want.tolist())
    with pytest.raises(ValueError, match="teacher_boards holds 39 puzzles"):
        ev.chain_diagnosis(model, codec, sched, ps, steps=3, seed=7, teacher_boards=boards[:39])
