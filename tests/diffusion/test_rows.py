"""Per-row noise levels (issue 13, arm 1): the rolling schedule, the per-row forward process and
sampler, exact per-row log-probabilities, and the per-row / recursive denoiser."""
import dataclasses

import pytest
import torch

from tdrm.config import Denoiser as DenoiserConfig
from tdrm.diffusion.samplers import row_rounds, row_step, sample_ddim, sample_rows
from tdrm.diffusion.schedules import make_schedule, q_sample, row_levels
from tdrm.models.denoiser import Denoiser


def test_row_levels_endpoints_order_and_lag():
    T, K = 100, 4
    p = torch.linspace(0, 1, 41, dtype=torch.float64)
    for lag in (0.0, 0.5, 1.0):
        lv = row_levels(p, K, lag, T)  # (41, K)
        assert (lv[0] == T).all() and (lv[-1] == 0).all()
        assert (lv[1:] <= lv[:-1]).all()  # every row only gets cleaner
        assert (lv[:, 1:] >= lv[:, :-1]).all()  # a later row is never cleaner than an earlier one
    shared = row_levels(p, K, 0.0, T)
    assert (shared == shared[:, :1]).all()
    ar = row_levels(p, K, 1.0, T)  # row by row: row r starts only when row r - 1 is clean
    for r in range(1, K):
        started = ar[:, r] < T
        assert (ar[started, r - 1] == 0).all()
    with pytest.raises(ValueError, match="row_lag"):
        row_levels(p, K, 1.5, T)


def test_row_rounds_cover_every_row_once_per_level_change():
    rounds = row_rounds(4, 20, 1.0, 200)
    assert len(rounds) == 20
    assert (rounds[0][0] == 200).all() and (rounds[-1][1] == 0).all()
    for t, tn in rounds:
        assert (tn <= t).all() and (tn < t).any()
    # row by row: each round moves exactly one row
    assert all(int((tn < t).sum()) == 1 for t, tn in rounds)
    with pytest.raises(ValueError, match="steps"):
        row_rounds(4, 0, 1.0, 200)


class Oracle:
    """A model that returns the true x0 whatever it is given (and checks the per-row levels)."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def __call__(self, x, t, cond=None):
        assert t.shape == x.shape[:2]
        self.calls.append(t.clone())
        return self.x0


@pytest.mark.parametrize("lag", [0.0, 0.5, 1.0])
def test_forward_process_and_sampler_agree(lag):
    """With the true x0 the per-row sampler reproduces the trajectory exactly, deterministic or not
    (the forward process's marginals are what the sampler's steps assume)."""
    s = make_schedule("cosine", 50, shift=4.0)
    x0 = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for eta in (0.0, 1.0):
        m = Oracle(x0)
        out = sample_rows(m, xT, s, generator=torch.Generator().manual_seed(2), steps=12, lag=lag, eta=eta)
        assert torch.allclose(out.x0, x0, atol=1e-5)
        assert len(m.calls) == len(row_rounds(4, 12, lag, 50))
    # a shared schedule (lag 0) visits the same levels as a plain DDIM chain of the same length
    if lag == 0.0:
        plain = sample_ddim(lambda x, t, c=None: x0, xT, s, generator=torch.Generator(), steps=12)
        assert torch.allclose(plain.x0, x0, atol=1e-5)


def test_row_step_matches_q_sample_marginals_and_leaves_still_rows():
    """Noising x0 to t_hi per row, then one deterministic step with the true x0 lands exactly on
    q_sample(x0, t) with the same noise; rows whose level does not change are untouched."""
    s = make_schedule("cosine", 40)
    x0 = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t_hi = torch.tensor([[30, 20, 0], [40, 40, 5]])
    t = torch.tensor([[10, 20, 0], [0, 25, 5]])
    x_hi = q_sample(x0, t_hi, s, eps)
    mean, sigma = row_step(s, x_hi, x0, t_hi, t, eta=0.0)
    assert torch.allclose(mean, q_sample(x0, t, s, eps), atol=1e-5)
    assert torch.equal(mean[0, 1], x_hi[0, 1]) and torch.equal(mean[0, 2], x_hi[0, 2])
    assert (sigma == 0).all()


def test_row_log_probs_equal_torch_normal():
    s = make_schedule("cosine", 30, shift=2.0)
    x0 = torch.randn(2, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    out = sample_rows(Oracle(x0 + 0.3), xT, s, generator=torch.Generator().manual_seed(3), steps=9, lag=0.5,
                      eta=1.0, return_path=True)
    checked = 0
    for st in out.path:
        rows = [r for r in range(3) if float(st.sigma[r]) > 0]
        if not rows:
            assert st.log_prob is None
            continue
        ref = sum(torch.distributions.Normal(st.mean[:, r].double(), float(st.sigma[r])).log_prob(
            st.x_prev[:, r].double()).flatten(1).sum(-1) for r in rows)
        assert torch.allclose(st.log_prob, ref, rtol=1e-9, atol=1e-6)
        # rows that did not move are carried over unchanged
        still = st.t_prev == st.t
        assert torch.equal(st.x_prev[:, still], st.x_t[:, still])
        checked += 1
    assert checked >= 5


def _denoiser(**kw):
    cfg = DenoiserConfig(hidden=32, layers=2, heads=2, cell_mixer="mlp", self_cond=True, **kw)
    m = Denoiser(cfg, steps=3, cells=8, channels=6, vocab=5)
    for p in m.parameters():  # adaLN-Zero starts as the identity: perturb so every path matters
        torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    return m


def test_per_row_levels_equal_shared_level_when_rows_agree_except_the_puzzle_row():
    """The per-row path with every row at level t differs from the shared path only in the clean
    puzzle row's time embedding: with that row's level also t, the two are identical."""
    m = _denoiser()
    x = torch.randn(2, 3, 8, 6)
    puzzle = torch.randint(1, 5, (2, 8))
    t = torch.tensor([7, 30])
    shared = m(x, t, puzzle)
    per_row = m(x, t[:, None].expand(2, 3).contiguous(), puzzle)
    assert per_row.shape == shared.shape and not torch.allclose(per_row, shared)
    orig = m.time.forward
    m.time.forward = lambda e: orig(e).view(2, 4, -1)[:, 1:2].expand(2, 4, -1).reshape(8, -1)  # puzzle row at t
    assert torch.allclose(m(x, t[:, None].expand(2, 3).contiguous(), puzzle), shared, atol=1e-5)
    # one row's level changes that row's output (and through attention over steps, the others)
    t2 = t[:, None].expand(2, 3).clone()
    t2[:, 2] = 0
    assert not torch.allclose(m(x, t2, puzzle)[:, 2], per_row[:, 2])
    with pytest.raises(ValueError, match="per-row"):
        m(x, torch.zeros(2, 4, dtype=torch.long), puzzle)


def test_recursive_denoiser_r1_is_the_plain_one_and_r2_iterates_the_same_blocks():
    base = _denoiser()
    rec = _denoiser(recur=2)
    rec.load_state_dict(base.state_dict())  # weight-tied: no new parameters
    x, t, puzzle = torch.randn(2, 3, 8, 6), torch.tensor([5, 40]), torch.randint(1, 5, (2, 8))
    one = dataclasses.replace(base.cfg, recur=1)
    assert one == base.cfg and sum(p.numel() for p in rec.parameters()) == sum(p.numel() for p in base.parameters())
    a, b = base(x, t, puzzle), rec(x, t, puzzle)
    assert not torch.allclose(a, b)
    blocks = list(base.blocks)
    base.blocks = torch.nn.ModuleList(blocks + blocks)  # the same blocks listed twice = recursion twice
    assert torch.allclose(base(x, t, puzzle), b, atol=1e-6)
    with pytest.raises(ValueError, match="recur"):
        _denoiser(recur=0)


def test_row_causal_denoiser_reads_the_puzzle_and_earlier_rows_only():
    """With row_causal, a change anywhere in rows k.. (noisy input, self-conditioning estimate,
    previous hidden state, per-row level) leaves the outputs of rows before k exactly as they were
    and changes row k's; the same weights without it let the change reach the earlier rows."""
    m = _denoiser(row_causal=True, latent_cond=True)
    full = _denoiser(latent_cond=True)
    full.load_state_dict(m.state_dict())  # no new parameters: the same network, attention unmasked
    g = torch.Generator().manual_seed(3)
    x, prev = torch.randn(2, 3, 8, 6, generator=g), torch.randn(2, 3, 8, 6, generator=g)
    h, puzzle = torch.randn(2, 4, 8, 32, generator=g), torch.randint(1, 5, (2, 8), generator=g)
    t = torch.tensor([[9, 20, 31], [40, 12, 3]])
    for k in (1, 2):
        x2, prev2, h2, t2 = x.clone(), prev.clone(), h.clone(), t.clone()
        x2[:, k] += 1.0
        prev2[:, k:] -= 0.5
        h2[:, k + 1] += torch.randn(2, 8, 32, generator=g)  # hidden row k + 1 = trajectory row k (row 0: the puzzle)
        t2[:, k] = 0
        for change in [(x2, t, prev, h), (x, t2, prev, h), (x, t, prev2, h), (x, t, prev, h2)]:
            a, b = m(x, t, puzzle, prev, h), m(*change[:2], puzzle, *change[2:])
            assert torch.equal(a[:, :k], b[:, :k])
            assert not torch.allclose(a[:, k], b[:, k])
        assert not torch.allclose(full(x, t, puzzle, prev, h)[:, :k], full(x2, t, puzzle, prev, h)[:, :k])
    # the last row reads every row; shared levels too
    assert torch.equal(m(x, t[:, 0], puzzle, prev, h)[:, 0], m(x2, t[:, 0], puzzle, prev, h)[:, 0])
    with pytest.raises(ValueError, match="row_causal.*factorised"):
        _denoiser(row_causal=True, attention="full")


def test_latent_cond_starts_as_the_plain_denoiser_and_reads_the_previous_hidden_state():
    """latent_cond adds the previous call's hidden state through a zero-initialised linear: freshly
    built it computes exactly the model without it, whatever the hidden state; trained (perturbed)
    the output depends on it, None is the zero state, and a wrong shape is refused."""
    cfg = DenoiserConfig(hidden=32, layers=2, heads=2, cell_mixer="mlp", self_cond=True)
    plain = Denoiser(cfg, steps=3, cells=8, channels=6, vocab=5)
    lat = Denoiser(dataclasses.replace(cfg, latent_cond=True), steps=3, cells=8, channels=6, vocab=5)
    x, t, puzzle = torch.randn(2, 3, 8, 6), torch.tensor([5, 40]), torch.randint(1, 5, (2, 8))
    ref, h = plain(x, t, puzzle, x, return_hidden=True)
    assert h.shape == (2, 4, 8, 32)
    for k, v in plain.state_dict().items():  # the same init for every shared weight
        assert torch.equal(lat.state_dict()[k], v), k
    assert torch.equal(lat(x, t, puzzle, x, torch.randn(2, 4, 8, 32)), ref)
    m = _denoiser(latent_cond=True)
    h_prev = torch.randn(2, 4, 8, 32)
    a = m(x, t, puzzle, x, h_prev)
    assert not torch.allclose(a, m(x, t, puzzle, x, 2 * h_prev + 1))
    assert torch.equal(m(x, t, puzzle, x), m(x, t, puzzle, x, torch.zeros_like(h_prev)))
    out, hid = m(x, t, puzzle, x, h_prev, return_hidden=True)
    assert torch.equal(out, a) and hid.shape == h_prev.shape
    with pytest.raises(ValueError, match="previous hidden state"):
        m(x, t, puzzle, x, torch.zeros(2, 3, 8, 32))
    with pytest.raises(ValueError, match="without latent_cond"):
        plain(x, t, puzzle, x, h_prev)


def test_sampler_carries_the_hidden_state_from_call_to_call():
    """With latent_cond every call of a sampling chain reads the previous call's hidden state (and
    estimate); the first call reads none."""
    from tdrm.diffusion.sampling import generate
    m = _denoiser(latent_cond=True)
    calls = []
    orig = m.forward

    def fwd(x, t, puzzle, x0_prev=None, h_prev=None, *, return_hidden=False):
        out = orig(x, t, puzzle, x0_prev, h_prev, return_hidden=return_hidden)
        calls.append((x0_prev, h_prev, *out) if return_hidden else None)
        return out
    m.forward = fwd
    sched = make_schedule("cosine", 40, 1.0)
    generate(m, torch.randint(1, 5, (2, 8)), sched, sampler="ddim", steps=4, eta=0.0,
             generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4 and calls[0][0] is None and calls[0][1] is None
    for (_, _, est, hid), (prev, h_prev, _, _) in zip(calls, calls[1:]):
        assert torch.equal(prev, est) and torch.equal(h_prev, hid)


def test_an_independent_level_model_samples_at_any_lag_and_only_it():
    """`set_sampling_lag`: a denoiser trained with independent per-row levels (Diffusion Forcing)
    is sampled on the rolling schedule of the lag it is given (the levels of every call are that
    schedule's rounds); one trained on a rolling schedule, or with a shared level, is refused."""
    from tdrm.diffusion.sampling import generate
    from tdrm.models.denoiser import set_sampling_lag
    m = Denoiser(DenoiserConfig(hidden=32, layers=2, heads=2, cell_mixer="mlp", self_cond=True),
                 steps=3, cells=8, channels=6, vocab=5, row_lag=1.0)
    seen = []
    orig = m.forward

    def fwd(x, t, puzzle, *a, **kw):
        seen.append(t[0].clone())
        return orig(x, t, puzzle, *a, **kw)
    m.forward = fwd
    sched = make_schedule("cosine", 40, 1.0)
    for lag in (0.0, 0.5, 1.0):
        set_sampling_lag(m, "independent", lag)
        seen.clear()
        generate(m, torch.randint(1, 5, (2, 8)), sched, sampler="ddim", steps=6, eta=0.0,
                 generator=torch.Generator().manual_seed(0))
        want = [t for t, _ in row_rounds(3, 6, lag, 40)]
        assert len(seen) == len(want) and all(torch.equal(a, b) for a, b in zip(seen, want))
    assert (seen[0] == torch.tensor([40, 40, 40])).all() and any(bool((t[:1] == 0).all() and t[1] > 0) for t in seen)
    for bad in ("rolling", "shared", "cells"):
        with pytest.raises(ValueError, match=f"row_noise {bad!r}"):
            set_sampling_lag(m, bad, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_sampling_lag(m, "independent", 1.5)


def test_shared_prob_mixes_one_level_samples_into_independent_row_levels():
    """`distill.shared_prob` (row_noise independent): about that share of the samples get one level
    in 1..T for all rows, the rest independent levels in 0..T; 0 leaves the independent draw and its
    random stream as they were; other row_noise values refuse it."""
    from tdrm.config import Distill
    from tdrm.train.distill import check_arms, draw_levels
    k, b = 4, 4000
    base = Distill(row_noise="independent", T=50, sample_steps=10)
    t0, _ = draw_levels(base, b, k, torch.Generator().manual_seed(0))
    t0_again, _ = draw_levels(dataclasses.replace(base, shared_prob=0.0), b, k, torch.Generator().manual_seed(0))
    assert torch.equal(t0, t0_again)
    same0 = float((t0 == t0[:, :1]).all(1).float().mean())
    assert same0 < 0.01  # independent: four equal levels happen by chance only ((1/51)^3)
    for prob in (0.3, 1.0):
        t, t_hi = draw_levels(dataclasses.replace(base, shared_prob=prob), b, k, torch.Generator().manual_seed(0))
        assert t.shape == t_hi.shape == (b, k) and (t_hi >= t).all()
        one = (t == t[:, :1]).all(1)
        assert abs(float(one.float().mean()) - prob) < 0.03
        assert (t[one] >= 1).all() and (t[one] <= 50).all()
        assert not one.all() or prob == 1.0
    for bad, msg in [(dataclasses.replace(base, row_noise="rolling", shared_prob=0.5), "needs row_noise independent"),
                     (dataclasses.replace(base, shared_prob=1.5), r"shared_prob must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=msg):
            check_arms(bad)
