"""The models through the Triton path (interpreter on CPU) against the reference path: a TRM
supervision step (MLP-t and RoPE attention variants) and the denoiser (full and factorised
attention), forward and every parameter gradient."""
import pytest
import torch

from tdrm.config import Denoiser as DenoiserConfig
from tdrm.config import Model
from tdrm.models.denoiser import Denoiser
from tdrm.models.trm import TRM

from .util import DEVICE


def _both_paths(monkeypatch, model, run):
    outs = []
    for m in ("torch", "triton"):
        monkeypatch.setenv("TDRM_KERNELS", m)
        model.zero_grad()
        out = run()
        out.square().mean().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_g), (got, got_g) = outs
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert ref_g.keys() == got_g.keys() and len(ref_g) > 5
    for n in ref_g:
        torch.testing.assert_close(got_g[n], ref_g[n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("mixer,pos", [("mlp_t", "learned"), ("attention", "rope")])
def test_trm_step_through_the_kernels_matches_the_reference_path(monkeypatch, mixer, pos):
    cfg = Model(hidden=64, heads=2, T=2, n=2, n_sup=2, prefix=2, multiple_of=16, mixer=mixer, pos=pos)
    model = TRM(cfg, cells=36, vocab=8).to(DEVICE)
    tokens = torch.randint(0, 8, (3, 36), generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def run():
        x = model.input_embedding(tokens)
        y, z = model.initial_state(3)
        y, z, logits, q = model.step(y, z, x)
        return logits

    _both_paths(monkeypatch, model, run)


@pytest.mark.parametrize("attention,cell_mixer", [("full", "attention"), ("factorised", "mlp"),
                                                  ("factorised", "attention")])
def test_denoiser_through_the_kernels_matches_the_reference_path(monkeypatch, attention, cell_mixer):
    cfg = DenoiserConfig(hidden=32, layers=2, heads=2, attention=attention, cell_mixer=cell_mixer)
    model = Denoiser(cfg, steps=3, cells=37, channels=8, vocab=8, prefix=1).to(DEVICE)
    with torch.no_grad():  # adaLN-Zero starts as the identity; give the gates something to do
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 37, 8, generator=g).to(DEVICE)
    t = torch.tensor([3, 70]).to(DEVICE)
    puzzle = torch.randint(0, 8, (2, 36), generator=g).to(DEVICE)
    _both_paths(monkeypatch, model, lambda: model(x, t, puzzle))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trm_mlp_t", "trm_attention", "denoiser"])
def test_the_triton_ops_trace_whole_under_torch_compile(monkeypatch, which):
    """The ops are torch.library custom ops (fake shapes, registered autograd): torch.compile
    captures a TRM step or the denoiser as one graph (fullgraph) with the Triton ops inside, and
    the compiled forward and backward equal eager. aot_eager: the graph capture and autograd
    without a C++ build; on a GPU, tests/kernels/test_gpu.py compiles with inductor."""
    monkeypatch.setenv("TDRM_KERNELS", "triton")
    torch._dynamo.reset()
    if which == "denoiser":
        model = Denoiser(DenoiserConfig(hidden=32, layers=2, heads=2, attention="factorised", cell_mixer="attention"),
                         steps=3, cells=37, channels=8, vocab=8, prefix=1).to(DEVICE)
        g = torch.Generator().manual_seed(1)
        args = (torch.randn(2, 3, 37, 8, generator=g).to(DEVICE), torch.tensor([3, 70]).to(DEVICE),
                torch.randint(0, 8, (2, 36), generator=g).to(DEVICE))

        def run(*a):
            return model(*a)
    else:
        mixer, pos = ("mlp_t", "learned") if which == "trm_mlp_t" else ("attention", "rope")
        model = TRM(Model(hidden=64, heads=2, T=2, n=2, n_sup=2, prefix=2, multiple_of=16, mixer=mixer, pos=pos),
                    cells=36, vocab=8).to(DEVICE)
        args = (torch.randint(0, 8, (3, 36), generator=torch.Generator().manual_seed(0)).to(DEVICE),)

        def run(tokens):
            y, z = model.initial_state(3)
            return model.step(y, z, model.input_embedding(tokens))[2]

    outs = []
    for fn in (run, torch.compile(run, fullgraph=True, backend="aot_eager")):
        model.zero_grad()
        out = fn(*args)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    assert len(outs[1][1]) == len(outs[0][1]) > 5
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
