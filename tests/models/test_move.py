"""The move denoiser (distill.denoiser.arch: move): row k is one TRM step from row k-1."""
import pytest
import torch

from tdrm.config import Distill, Denoiser as DenoiserConfig, Model
from tdrm.diffusion.sampling import generate
from tdrm.diffusion.schedules import make_schedule
from tdrm.diffusion.trajectory import Standardizer
from tdrm.models.denoiser import build_denoiser
from tdrm.models.move import MoveDenoiser
from tdrm.models.trm import TRM

MODEL = Model(hidden=32, layers=2, mixer="mlp_t", heads=2, multiple_of=16, T=2, n=2, n_sup=3, prefix=1)


def _setup(init="teacher", seed=0, **over):
    torch.manual_seed(0)
    teacher = TRM(MODEL, cells=16, vocab=6).eval()
    tokens = torch.randint(1, 6, (5, 16))
    with torch.no_grad():
        tr = teacher.trace(tokens)  # y, z (K, B, L, D)
    raw = torch.cat([tr.y, tr.z], dim=-1).transpose(0, 1)  # (B, K, L, 2D): rows of state yz
    flat = raw.reshape(-1, raw.shape[-1])
    stdz = Standardizer(flat.mean(0), flat.std(0))
    cfg = Distill(state="yz", T=50, denoiser=DenoiserConfig(hidden=32, self_cond=True, arch="move", init=init,
                                                                 init_seed=seed), **over)
    sched = make_schedule(cfg.schedule, cfg.T, cfg.shift)
    k, l, c = raw.shape[1:]
    model = build_denoiser(cfg, k, l, c, 6, MODEL.prefix, teacher=teacher, stdz=stdz, schedule=sched).eval()
    return model, teacher, tokens, stdz.forward(raw), sched, cfg, stdz


def test_teacher_init_moves_every_row_from_the_previous_one():
    """Fed the true trajectory as its previous estimate, the untrained teacher-initialised model
    returns the trajectory itself: row 0 is the teacher's first step from its initial state and
    row k one step from row k-1 (the learned correction starts at zero)."""
    model, _, tokens, x, _, _, _ = _setup()
    noisy = torch.randn_like(x)
    with torch.no_grad():
        out = model(noisy, torch.full((5,), 30), tokens, x)
        shifted = model(noisy, torch.full((5,), 30), tokens, torch.roll(x, 1, dims=1))
    assert torch.allclose(out, x, atol=1e-4), (out - x).abs().max()
    assert not torch.allclose(shifted[:, 1:], x[:, 1:], atol=1e-2)  # it really reads the previous row


def test_teacher_init_chain_reaches_the_teacher_trajectory_after_K_calls():
    """The sampler's chain is a fixed-point iteration over the rows: K calls reproduce the
    teacher's whole trajectory whatever the starting noise, K - 1 calls leave the last row wrong."""
    model, _, tokens, x, sched, _, _ = _setup()
    k = x.shape[1]
    gen = lambda s, steps: generate(model, tokens, sched, sampler="ddim", steps=steps, eta=0.0,
                                    generator=torch.Generator().manual_seed(s))
    for seed in (0, 1):
        assert torch.allclose(gen(seed, k), x, atol=1e-4)
    short = gen(0, k - 1)
    assert torch.allclose(short[:, :k - 1], x[:, :k - 1], atol=1e-4)
    assert (short[:, -1] - x[:, -1]).abs().max() > 0.1


def test_random_init_is_not_the_teacher_and_first_call_reads_the_noisy_rows():
    model, _, tokens, x, _, _, _ = _setup(init="random", seed=1)  # seed 0 would be the (untrained) teacher's
    t = torch.full((5,), 10)
    with torch.no_grad():
        out = model(x, t, tokens, x)
        a = model(x, t, tokens)  # no estimate yet: the source rows are sqrt(alpha_bar) x_t
        b = model(model.c_in[10] * x, t, tokens, model.c_in[10] * x)
    assert not torch.allclose(out, x, atol=1e-1)
    assert torch.allclose(a, b, atol=1e-5)  # zero-initialised correction: only the moved rows count


def test_per_row_levels_and_gradients_reach_the_core():
    model, _, tokens, x, _, _, _ = _setup(init="random")
    model.train()
    t = torch.randint(0, 50, (5, x.shape[1]))
    out = model(x, t, tokens, x)
    out.square().mean().backward()
    for p in model.core.blocks.parameters():  # the weight-tied f is trained through the last cycle
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.corr_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("over,den,msg", [
    ({"state": "y"}, {}, "needs distill.state yz"),
    ({"final_only": True}, {}, "final_only"),
    ({}, {"self_cond": False}, "self_cond: true"),
    ({}, {"hidden": 64}, "must equal the teacher's hidden 32"),
    ({}, {"init": "copy"}, "init must be random or teacher"),
    ({}, {"arch": "unet"}, "arch must be dit or move"),
    ({}, {"latent_cond": True}, "latent_cond is a dit option"),
    ({}, {"row_causal": True}, "row_causal is a dit option"),
])
def test_move_arch_refuses_what_it_cannot_model(over, den, msg):
    teacher = TRM(MODEL, cells=16, vocab=6)
    stdz = Standardizer(torch.zeros(64), torch.ones(64))
    base = {"hidden": 32, "self_cond": True, "arch": "move", "init": "teacher"}
    cfg = Distill(**{"state": "yz", **over}, denoiser=DenoiserConfig(**{**base, **den}))
    with pytest.raises(ValueError, match=msg):
        build_denoiser(cfg, 3, 17, 64, 6, 1, teacher=teacher, stdz=stdz, schedule=make_schedule("cosine", 50))


def test_move_arch_needs_the_prefix_positions():
    teacher = TRM(MODEL, cells=16, vocab=6)
    cfg = DenoiserConfig(hidden=32, self_cond=True, arch="move")
    with pytest.raises(ValueError, match="traces.prefix: true"):
        MoveDenoiser(cfg, MODEL, 3, 16, 64, 6, 0, torch.zeros(64), torch.ones(64), torch.ones(51))
