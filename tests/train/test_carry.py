"""The chain carry (`distill.chain_prob`): the carried chains are the sampler's own chain, refills
and staggering do what they say, training on them resumes exactly."""
import pytest
import torch
from torch import nn

from tdrm import checkpoint
from tdrm.diffusion.sampling import generate
from tdrm.diffusion.schedules import make_schedule, q_sample
from tdrm.train import carry as chain
from tdrm.train.distill import train_distill

from ..conftest import crash_at, tiny_params
from .test_distill import DISTILL, setup  # noqa: F401  (the module's tiny traces fixture)

K, L, C, N = 3, 5, 4, 5


class Toy(nn.Module):
    """A deterministic, input-dependent stand-in for the denoiser: x0_hat from x_t, t and the
    previous estimate (self-conditioning), so the chain's result depends on every call."""

    def __init__(self):
        super().__init__()
        self.K, self.L, self.C = K, L, C
        self.cfg = type("Cfg", (), {"self_cond": True})()
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(2 * C, C, generator=g) / C

    def forward(self, x_t, t, puzzle, prev=None):
        prev = torch.zeros_like(x_t) if prev is None else prev
        h = torch.cat([x_t, prev], -1) @ self.w
        return torch.tanh(h + t.float().view(-1, 1, 1, 1) / 50 + puzzle.float().mean(-1).view(-1, 1, 1, 1))


def test_carried_chain_is_the_ddim_sampler_chain():
    """Started at call 0 from the sampler's own x_T, S calls and `advance`s reproduce `generate`
    (DDIM, eta 0) exactly: training sees the states evaluation visits."""
    sched, model, steps = make_schedule("cosine", 50, 2.0), Toy(), 6
    levels = chain.chain_levels(sched, steps)
    assert levels[0] == 50 and levels[-1] == 0 and len(levels) == steps + 1
    puzzle = torch.randint(1, 5, (4, N))
    ref = generate(model, puzzle, sched, sampler="ddim", steps=steps, eta=0.0,
                   generator=torch.Generator().manual_seed(7))
    x_T = torch.randn((4, K, L, C), generator=torch.Generator().manual_seed(7))
    c = chain.Carry(torch.zeros_like(x_T), x_T, torch.zeros_like(x_T), torch.zeros(4, dtype=torch.long), puzzle,
                    torch.zeros(4, N, dtype=torch.long))
    for m in range(steps):
        x0_hat = model(c.x, levels[c.m], c.puzzle, c.prev if m else None)
        c = chain.advance(c, levels, sched, x0_hat)
        assert (c.m == m + 1).all() and torch.equal(c.prev, x0_hat)
    torch.testing.assert_close(c.x, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(c.x, x_T)


def test_carried_chain_with_latent_cond_is_the_sampler_chain():
    """With latent_cond the carry keeps each call's hidden state, and S calls and `advance`s of a
    real denoiser reproduce `generate` exactly; a refilled slot's hidden state is zeroed."""
    from ..diffusion.test_rows import _denoiser
    sched, model, steps = make_schedule("cosine", 50, 2.0), _denoiser(latent_cond=True), 5
    levels = chain.chain_levels(sched, steps)
    puzzle = torch.randint(1, 5, (4, 8))
    ref = generate(model, puzzle, sched, sampler="ddim", steps=steps, eta=0.0,
                   generator=torch.Generator().manual_seed(7))
    x_T = torch.randn((4, 3, 8, 6), generator=torch.Generator().manual_seed(7))
    c = chain.Carry(torch.zeros_like(x_T), x_T, torch.zeros_like(x_T), torch.zeros(4, dtype=torch.long), puzzle,
                    torch.zeros(4, 8, dtype=torch.long))
    with torch.no_grad():
        for m in range(steps):
            x0_hat, hid = model(c.x, levels[c.m], c.puzzle, c.prev if m else None, c.hidden, return_hidden=True)
            c = chain.advance(c, levels, sched, x0_hat, hid)
            assert torch.equal(c.hidden, hid)
    torch.testing.assert_close(c.x, ref, rtol=1e-5, atol=1e-5)
    fresh = torch.randn((4, 3, 8, 6))
    r, n = chain.refill(c, levels, sched, fresh, fresh, puzzle, c.targets)
    assert n == 4 and not r.hidden.any() and c.hidden.any()
    state = chain.Carry.from_state(r.state_dict(), "cpu")
    assert torch.equal(state.hidden, r.hidden)
    assert chain.Carry.from_state(chain.start(levels, sched, fresh, fresh, puzzle, c.targets).state_dict(),
                                  "cpu").hidden is None


def test_start_staggers_and_refill_replaces_only_finished_chains():
    sched, steps = make_schedule("cosine", 50, 2.0), 4
    levels = chain.chain_levels(sched, steps)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((6, K, L, C), generator=g), torch.randn((6, K, L, C), generator=g)
    puzzle, targets = torch.randint(1, 5, (6, N), generator=g), torch.randint(1, 5, (6, K, N), generator=g)
    c = chain.start(levels, sched, x0, eps, puzzle, targets, first=2)
    assert c.m.tolist() == [2, 3, 0, 1, 2, 3]  # global rows 2..7 mod 4
    torch.testing.assert_close(c.x, q_sample(x0, levels[c.m], sched, eps))
    assert not c.prev.any()
    c = chain.advance(c, levels, sched, torch.randn((6, K, L, C), generator=g))  # slots 1 and 5 finish
    assert c.m.tolist() == [3, 4, 1, 2, 3, 4]
    fx0, feps = torch.randn((6, K, L, C), generator=g), torch.randn((6, K, L, C), generator=g)
    fp, ft = torch.randint(1, 5, (6, N), generator=g), torch.randint(1, 5, (6, K, N), generator=g)
    r, n = chain.refill(c, levels, sched, fx0, feps, fp, ft)
    assert n == 2 and r.m.tolist() == [3, 0, 1, 2, 3, 0]
    for i in (1, 5):  # slot i takes row i of the fresh batch, at level T, without a previous estimate
        assert torch.equal(r.x0[i], fx0[i]) and torch.equal(r.puzzle[i], fp[i]) and torch.equal(r.targets[i], ft[i])
        torch.testing.assert_close(r.x[i], q_sample(fx0[i:i + 1], levels[:1], sched, feps[i:i + 1])[0])
        assert not r.prev[i].any()
    for i in (0, 2, 3, 4):
        assert torch.equal(r.x[i], c.x[i]) and torch.equal(r.x0[i], c.x0[i]) and torch.equal(r.prev[i], c.prev[i])
    r2, n2 = chain.refill(c, levels, sched, fx0[:1], feps[:1], fp[:1], ft[:1])  # a short batch: rows cycle
    assert n2 == 2 and torch.equal(r2.x0[5], fx0[0])
    assert chain.refill(r, levels, sched, fx0, feps, fp, ft)[1] == 0


@pytest.mark.parametrize("latent", [False, True], ids=["plain", "latent_cond"])
def test_training_on_the_carry_feeds_each_call_the_last_calls_step(setup, monkeypatch, latent):  # noqa: F811
    """With chain_prob 1 every step's denoiser input (with gradient) is the deterministic reverse step
    of the previous step's input with the previous (detached) estimate, for every slot not refilled;
    the estimate is also the self-conditioning input, and with latent_cond the previous call's hidden
    state is the next call's (zeros for a refilled slot)."""
    from tdrm.models.denoiser import Denoiser
    p, d, teacher = setup
    p = tiny_params({"distill": {**DISTILL, "steps": 6, "eval_every": 0, "chain_prob": 1.0, "sample_steps": 5,
                                 "denoiser": {**DISTILL["denoiser"], "self_cond": True, "latent_cond": latent}}})
    calls = []
    orig = Denoiser.forward

    def fwd(self, x_t, t, puzzle, x0_prev=None, h_prev=None, *, return_hidden=False):
        out = orig(self, x_t, t, puzzle, x0_prev, h_prev, return_hidden=return_hidden)
        est, hid = out if return_hidden else (out, None)
        calls.append((torch.is_grad_enabled(), x_t.clone(), t.clone(), x0_prev, est.detach().clone(), h_prev,
                      None if hid is None else hid.detach().clone()))
        return out
    monkeypatch.setattr(Denoiser, "forward", fwd)
    train_distill(p, d / "tr", teacher, d / "carry.pt", progress=False)
    assert len(calls) == 6 and all(c[0] for c in calls)
    sched = make_schedule("cosine", 50, 1.0, p.distill.spacing)  # the sampler's levels, as trained
    levels = chain.chain_levels(sched, 5)
    assert calls[0][2].tolist() == [int(levels[i % 5]) for i in range(32)]  # staggered start
    for (_, x, t, _, est, _, hid), (_, x_next, t_next, prev_next, _, h_next, _) in zip(calls, calls[1:]):
        going = t > levels[-2]  # slots not at their last call: they continue, the others are refilled
        m = torch.searchsorted(-levels, -t)
        assert (t_next[going] == levels[m[going] + 1]).all() and (t_next[~going] == levels[0]).all()
        c = chain.Carry(x, x, est, m, torch.zeros(32, 1), torch.zeros(32, 1))
        moved = chain.advance(c, levels, sched, est)
        torch.testing.assert_close(x_next[going], moved.x[going])
        torch.testing.assert_close(prev_next[going], est[going])
        assert not prev_next[~going].any()
        if latent:
            assert torch.equal(h_next[going], hid[going]) and not h_next[~going].any()
        else:
            assert h_next is None and hid is None


@pytest.mark.parametrize("latent", [False, True], ids=["plain", "latent_cond"])
def test_chain_training_resumes_to_identical_weights(setup, tmp_path, latent):  # noqa: F811
    """The carry is part of the resume checkpoint: a crash and resume ends where the uninterrupted
    run does (without it, the resumed run would restart its chains and differ); with latent_cond
    the carried hidden states too."""
    p, d, teacher = setup
    p = tiny_params({"distill": {**DISTILL, "steps": 60, "eval_every": 0, "ckpt_every": 20, "chain_prob": 0.5,
                                 "self_correct_prob": 0.5, "ce_rows": "all",
                                 "denoiser": {**DISTILL["denoiser"], "self_cond": True, "latent_cond": latent}}})
    train_distill(p, d / "tr", teacher, tmp_path / "a.pt", resume_path=tmp_path / "ra.pt", progress=False,
                  log_every=10)
    with pytest.raises(KeyboardInterrupt):
        train_distill(p, d / "tr", teacher, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", tracker=crash_at(50),
                      progress=False, log_every=10)
    ck = checkpoint.load(tmp_path / "rb.pt")
    assert ck["step"] == 40 and ck["carry"][0]["m"].shape == (32,) and ck["chains_done"] > 0
    assert (ck["carry"][0]["hidden"] is not None) == latent
    train_distill(p, d / "tr", teacher, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", progress=False,
                  log_every=10)
    a, b = checkpoint.load(tmp_path / "a.pt"), checkpoint.load(tmp_path / "b.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["chains_done"] == b["history"][-1]["chains_done"] > 32


def test_chain_prob_refuses_bad_values(setup, tmp_path):  # noqa: F811
    _, d, teacher = setup
    for over, msg in [({"chain_prob": 1.5}, "chain_prob must be in"),
                      ({"chain_prob": 0.5, "row_noise": "rolling"}, "needs row_noise shared"),
                      ({"denoiser": {**DISTILL["denoiser"], "self_cond": False, "latent_cond": True}}, "needs denoiser.self_cond")]:
        with pytest.raises(ValueError, match=msg):
            train_distill(tiny_params({"distill": {**DISTILL, **over}}), d / "tr", teacher, tmp_path / "x.pt",
                          progress=False)
