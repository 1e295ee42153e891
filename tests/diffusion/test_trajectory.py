"""The codec between modelled rows and the teacher: exact decoding, y recomputed from z, and the
dynamics-consistency residual (zero on the teacher's own trajectory, large off it)."""
import dataclasses

import pytest
import torch

from tdrm.config import Traces
from tdrm.data.board import to_tokens
from tdrm.diffusion.trajectory import Codec, Layout
from tdrm.traces.tensors import fit_standardizer, state_tensor
from tdrm.checkpoint import load_teacher
from tdrm.traces.record import record
from tdrm.traces.store import TraceReader

from ..conftest import tiny_teacher

CFG = Traces(splits=("val",), limit=12, shard_size=12, batch=12, prefix=True)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trained tiny teacher (T = 2, n = 2, one prefix position) and three trace sets of its val split."""
    d = tmp_path_factory.mktemp("codec")
    tiny_teacher(d, 60)
    teacher, _ = load_teacher(d / "t.pt")
    sets = {"step": CFG, "inner": dataclasses.replace(CFG, inner=True),
            "cells": dataclasses.replace(CFG, prefix=False)}
    for name, cfg in sets.items():
        record(teacher, d / "t.pt", d, d / name, cfg, 0, "cpu", progress=False)
    return teacher, d


def _codec(teacher, d, traces: str, state: str):
    r = TraceReader(d / traces / "val")
    layout = Layout.of(state, teacher.cfg, r.header["config"])
    codec = Codec(teacher, layout, fit_standardizer(r, layout), None)
    shard = r.load_shard(0)
    x = codec.stdz.forward(state_tensor(shard, layout, "fp16"))  # (M, R, L, C)
    return codec, x, shard


@pytest.mark.parametrize("traces,state", [("step", "y"), ("step", "yz"), ("inner", "z"), ("cells", "y")])
def test_decoding_the_true_trajectory_gives_the_teachers_answers(recorded, traces, state):
    teacher, d = recorded
    codec, x, shard = _codec(teacher, d, traces, state)
    rows = teacher.cfg.n_sup * (teacher.cfg.T if state == "z" else 1)
    assert x.shape[1:3] == (rows, 16 + (0 if traces == "cells" else 1))
    with torch.no_grad():
        logits = codec.step_logits(x)  # (M, K, N, V)
        final = codec.answer_logits(x)
    want = torch.as_tensor(shard["logits"]).float()  # the teacher's own, (M, K, N, V)
    assert logits.shape == want.shape and torch.equal(final, logits[:, -1])
    # fp16 storage is the only difference (state z also rebuilds y through the teacher's y-updates)
    assert (logits.argmax(-1) == want.argmax(-1)).float().mean() > 0.995
    assert (logits - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize("state", ["yz", "z"])
def test_dynamics_residual_vanishes_on_the_teachers_trajectory_only(recorded, state):
    teacher, d = recorded
    codec, x, shard = _codec(teacher, d, "inner" if state == "z" else "step", state)
    puzzles = torch.as_tensor(to_tokens(shard["puzzle"]))
    res = codec.dynamics_residual(x, puzzles)
    assert res.shape == x.shape
    shuffled = codec.dynamics_residual(x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))],
                                       puzzles)
    other = codec.dynamics_residual(x, puzzles.roll(1, 0))  # the right states, another puzzle's dynamics
    true, wrong, off = (r.square().mean().item() for r in (res, shuffled, other))
    assert true < 1e-3 and wrong > 100 * true and off > 100 * true, (true, wrong, off)
    # the teacher's move is a stop-gradient target: d mean(res^2) / dx = -2 res / numel
    xg = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    r = codec.dynamics_residual(xg, puzzles)
    r.square().mean().backward()
    assert torch.allclose(xg.grad, -2 * r.detach() / r.numel(), atol=1e-9)


def test_layout_and_codec_refuse_what_they_cannot_compute(recorded):
    teacher, d = recorded
    with pytest.raises(ValueError, match="traces.inner: true"):
        Layout.of("z", teacher.cfg, {"prefix": True, "inner": False})
    with pytest.raises(ValueError, match="inner: false"):
        Layout.of("yz", teacher.cfg, {"prefix": True, "inner": True})
    with pytest.raises(ValueError, match="must be one of"):
        Layout.of("zy", teacher.cfg, {"prefix": True, "inner": False})
    codec, x, shard = _codec(teacher, d, "cells", "y")
    with pytest.raises(ValueError, match="needs z"):
        codec.check_dynamics()
    r = TraceReader(d / "cells" / "val")
    layout = Layout.of("yz", teacher.cfg, r.header["config"])
    with pytest.raises(ValueError, match="traces.prefix: true"):
        Codec(teacher, layout, fit_standardizer(r, layout), None).check_dynamics()


@pytest.mark.parametrize("traces,state", [("step", "yz"), ("inner", "z")])
def test_teacher_corrector_continues_the_teachers_own_recursion(recorded, traces, state):
    """From the teacher's own recorded trajectory (y and z known at every position), one corrector
    step is the teacher's next supervision step: the same digits as tracing N_sup + 1 steps."""
    from tdrm.eval.tdrm import teacher_corrected
    teacher, d = recorded
    codec, x, shard = _codec(teacher, d, traces, state)
    tokens = torch.as_tensor(to_tokens(shard["puzzle"]))
    with torch.no_grad():
        got = teacher_corrected(codec, x, tokens, 2)  # (2, M, N)
        want = teacher.trace(tokens, teacher.cfg.n_sup + 2, keep_states=False).logits.argmax(-1) - 1
    assert got.shape == (2, len(tokens), 16)
    assert (got[0] == want[-2]).float().mean() >= 0.99 and (got[1] == want[-1]).float().mean() >= 0.99
