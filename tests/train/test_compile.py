"""`common.compile`: the compiled teacher step and denoiser compute what the eager ones do."""
import pytest
import torch

from tdrm.bench import speedups
from tdrm.config import Denoiser as DenoiserConfig
from tdrm.config import Model
from tdrm.device import maybe_compile
from tdrm.models.denoiser import Denoiser
from tdrm.models.trm import TRM
from tdrm.train.teacher import train_forward


def test_maybe_compile_off_is_the_function_itself():
    f = lambda x: x  # noqa: E731
    assert maybe_compile(f, False) is f


@pytest.mark.slow
def test_compiled_teacher_step_and_denoiser_match_eager_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    model = TRM(Model(hidden=32, n_sup=2, T=2, n=2, multiple_of=16), 16, 6)
    tokens = torch.randint(0, 6, (8, 16), generator=g)
    labels = torch.randint(1, 6, (8, 16), generator=g)
    y, z = model.initial_state(8)
    out = {}
    for comp in (False, True):
        model.zero_grad()
        y1, z1, q, loss, terms = maybe_compile(train_forward, comp)(model, y, z, tokens, labels, 0.5)
        loss.backward()
        out[comp] = (y1.detach(), q.detach(), loss.detach(), terms, model.embed.grad.clone())
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    den = Denoiser(DenoiserConfig(hidden=32, layers=2, heads=2), 3, 16, 32, 6)
    x = torch.randn(4, 3, 16, 32, generator=g)
    t = torch.randint(1, 50, (4,), generator=g)
    pz = torch.randint(0, 6, (4, 16), generator=g)
    # a trained denoiser (the zero-initialised adaLN gates make a fresh one trivial)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    eager = den(x, t, pz, x.flip(0))
    compiled = maybe_compile(den, True)(x, t, pz, x.flip(0))
    assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-5) and eager.abs().mean() > 0.01


def test_speedups_pair_compiled_with_eager_rows():
    rows = [{"what": "teacher step", "profile": "default", "compiled": False, "train_samples_x_steps_per_s": 100.0},
            {"what": "teacher step", "profile": "default", "compiled": True, "train_samples_x_steps_per_s": 150.0,
             "compile_s": 40.0},
            {"what": "denoiser step", "profile": "default", "compiled": False, "train_samples_x_steps_per_s": 10.0}]
    assert speedups(rows) == [{"what": "teacher step", "profile": "default", "speedup": 1.5, "compile_s": 40.0}]
