"""One noise level per cell (issue 13): the cell-order schedule, the per-cell forward process and
confidence-ordered sampler, exact per-cell log-probabilities, the per-cell denoiser and loss."""
import math

import pytest
import torch

from tdrm.config import Denoiser as DenoiserConfig, Distill
from tdrm.diffusion.logprob import masked_gaussian_log_prob
from tdrm.diffusion.losses import distillation_loss
from tdrm.diffusion.samplers import RowSlice, draw_gumbel, revise_cells, row_step, sample_cells, top_margin
from tdrm.diffusion.schedules import cell_levels, cell_starts, cells_started, make_schedule, q_sample
from tdrm.models.denoiser import Denoiser
from tdrm.train.distill import draw_levels


def test_cell_levels_endpoints_order_and_window():
    T, L = 100, 9
    p = torch.linspace(0, 1, 41, dtype=torch.float64)
    ranks = torch.randperm(L, generator=torch.Generator().manual_seed(0)).expand(41, -1)
    for w in (0.1, 0.5, 1.0):
        lv = cell_levels(p, ranks, w, T)[:, 0]  # (41, L)
        assert (lv[0] == T).all() and (lv[-1] == 0).all()
        assert (lv[1:] <= lv[:-1]).all()  # every cell only gets cleaner
        by_rank = lv.gather(1, ranks.argsort(-1))  # columns in order of rank
        assert (by_rank[:, 1:] >= by_rank[:, :-1]).all()  # a later cell is never cleaner than an earlier one
    shared = cell_levels(p, ranks, 1.0, T)[:, 0]
    assert (shared == shared[:, :1]).all()  # window 1: one shared level, plain diffusion
    # a cell not yet placed (rank -1) is pure noise
    assert (cell_levels(torch.tensor([0.7]), torch.full((1, L), -1), 0.2, T) == T).all()
    with pytest.raises(ValueError, match="cell_window"):
        cell_starts(L, 0.0)


def test_cells_started_counts_the_cells_the_schedule_moves():
    L, w, T = 12, 0.25, 200
    ranks = torch.arange(L)[None]
    for m in range(21):
        p = m / 20
        n = cells_started(p, L, w)
        lv = cell_levels(torch.tensor([p], dtype=torch.float64), ranks, w, T)[0, 0]
        # every cell that has moved off pure noise by p is among the first n; none beyond
        assert bool((lv[n:] == T).all())
    assert cells_started(0.0, L, w) == 0 and cells_started(1.0, L, w) == L


class Oracle:
    """Returns the true x0 whatever it is given, checks the per-cell levels and records them."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def __call__(self, x, t, cond=None):
        assert t.shape == (x.shape[0], 1, x.shape[2])
        self.calls.append(t.clone())
        return self.x0


@pytest.mark.parametrize("window", [0.1, 0.3, 1.0])
def test_forward_process_and_sampler_agree_and_confident_cells_go_first(window):
    """With the true x0 the per-cell sampler reproduces the trajectory exactly, deterministic or
    not; the cells it denoises first are the ones the confidence ranks highest."""
    s = make_schedule("cosine", 50, shift=4.0)
    x0 = torch.randn(3, 4, 7, 5, generator=torch.Generator().manual_seed(0))
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    scores = torch.rand(3, 7, generator=torch.Generator().manual_seed(2))
    for eta in (0.0, 1.0):
        m = Oracle(x0)
        out = sample_cells(m, xT, s, generator=torch.Generator().manual_seed(3), steps=10, window=window,
                           confidence=lambda x0_hat: scores, eta=eta)
        assert torch.allclose(out.x0, x0, atol=1e-5)
        assert len(m.calls) == 10 and (m.calls[0] == 50).all()
        if window < 1:
            # at every call, a more confident cell is never noisier than a less confident one
            order = scores.argsort(-1, descending=True)
            for t in m.calls:
                lv = t[:, 0].gather(1, order)
                assert (lv[:, 1:] >= lv[:, :-1]).all()


def test_sample_cells_records_its_order_and_every_step_is_on_its_schedule():
    """`Sample.ranks` is the order the chain chose (most confident first, a permutation per sample),
    and every recorded step's levels are `cell_levels` of that order at the step's progress: what
    RL's `renoise_order: rollout` re-noises with."""
    s = make_schedule("cosine", 50)
    x0 = torch.randn(3, 2, 7, 4, generator=torch.Generator().manual_seed(0))
    scores = torch.rand(3, 7, generator=torch.Generator().manual_seed(2))
    out = sample_cells(Oracle(x0), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)), s,
                       generator=torch.Generator().manual_seed(3), steps=6, window=0.3,
                       confidence=lambda x0_hat: scores, eta=1.0, return_path=True)
    assert torch.equal(out.ranks, scores.argsort(-1, descending=True).argsort(-1))
    for m, st in enumerate(out.path):
        p, p_next = torch.full((3,), m / 6, dtype=torch.float64), torch.full((3,), (m + 1) / 6, dtype=torch.float64)
        assert torch.equal(st.t, cell_levels(p, out.ranks, 0.3, 50))
        assert torch.equal(st.t_prev, cell_levels(p_next, out.ranks, 0.3, 50))


def test_draw_gumbel_is_standard_gumbel_and_a_row_slice_gets_its_rows():
    g = draw_gumbel((200_000,), torch.Generator().manual_seed(0)).double()
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772157) < 0.01  # Euler-Mascheroni
    assert abs(g.var().item() - math.pi ** 2 / 6) < 0.03
    assert abs((g <= 0).double().mean().item() - math.exp(-1)) < 0.005  # CDF exp(-exp(-x)) at 0
    full = draw_gumbel((5, 4), torch.Generator().manual_seed(1))
    part = draw_gumbel((2, 4), RowSlice(torch.Generator().manual_seed(1), 5, slice(1, 3)))
    assert torch.equal(part, full[1:3])


def test_sample_cells_order_temperature_draws_the_order_as_a_softmax_of_the_confidence():
    """tau = 0 is the confidence order, bitwise as without the option; tau > 0 draws it: between
    two cells, the first placed is cell 0 with probability sigmoid((c0 - c1) / tau) (Gumbel-top-k),
    and any drawn order still reproduces the truth with the exact x0, every step on its schedule;
    a RowSlice gets the rows of the whole batch's draw."""
    s = make_schedule("cosine", 50)
    x0 = torch.randn(3, 2, 7, 4, generator=torch.Generator().manual_seed(0))
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    scores = torch.rand(3, 7, generator=torch.Generator().manual_seed(2))

    def run(tau, seed=3, m=None, x=xT, sc=scores, gen=None):
        return sample_cells(m or Oracle(x0), x, s, generator=gen or torch.Generator().manual_seed(seed), steps=6,
                            window=0.3, confidence=lambda x0_hat: sc, eta=1.0, return_path=True,
                            order_temperature=tau)
    base = sample_cells(Oracle(x0), xT, s, generator=torch.Generator().manual_seed(3), steps=6, window=0.3,
                        confidence=lambda x0_hat: scores, eta=1.0, return_path=True)  # without the option
    zero = run(0.0)
    assert torch.equal(base.ranks, zero.ranks) and torch.equal(base.x0, zero.x0)
    drawn = [run(0.5, seed) for seed in range(6)]
    assert len({tuple(d.ranks.flatten().tolist()) for d in drawn}) > 1  # the order varies with the generator
    for d in drawn:
        assert torch.equal(d.ranks.sort(-1).values, torch.arange(7).expand(3, -1))  # a permutation per sample
        assert torch.allclose(d.x0, x0, atol=1e-5)
        for m, st in enumerate(d.path):
            p = torch.full((3,), m / 6, dtype=torch.float64)
            assert torch.equal(st.t, cell_levels(p, d.ranks, 0.3, 50))
    # two cells, confidence 0.3 and 0.1, tau 0.1: P(cell 0 first) = sigmoid(2) = 0.881
    n = 4000
    two = torch.zeros(n, 1, 2, 1)
    c = torch.tensor([0.3, 0.1]).expand(n, -1)
    out = sample_cells(Oracle(two), torch.randn(two.shape, generator=torch.Generator().manual_seed(4)), s,
                       generator=torch.Generator().manual_seed(5), steps=4, window=0.5,
                       confidence=lambda x0_hat: c, order_temperature=0.1)
    assert abs((out.ranks[:, 0] == 0).double().mean().item() - 1 / (1 + math.exp(-2))) < 0.02
    # a RowSlice: rows 1-2 of the whole batch's draw (noise and order alike)
    part = run(0.5, m=Oracle(x0[1:3]), x=xT[1:3], sc=scores[1:3], gen=RowSlice(torch.Generator().manual_seed(0), 3,
                                                                                     slice(1, 3)))
    assert torch.equal(part.ranks, drawn[0].ranks[1:3])
    # a rank without rows advances its generator as the ranks with rows do
    gens = [torch.Generator().manual_seed(0) for _ in range(2)]
    for g, rows in zip(gens, (slice(3, 3), slice(0, 3))):
        sample_cells(Oracle(x0[rows]), xT[rows], s, generator=RowSlice(g, 3, rows), steps=6, window=0.3,
                     confidence=lambda x0_hat: scores[rows], eta=1.0, order_temperature=0.5)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())
    with pytest.raises(ValueError, match="temperature"):
        run(-1.0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_revise_renoises_the_least_confident_cells_and_keeps_the_others_clean(eta):
    """A corrector round: the least confident cells go back to pure noise and are denoised again
    (with the true x0 they land on it), the others are clean context at every call and come out
    bitwise unchanged; the first revised cell starts at rank n of the schedule."""
    s = make_schedule("cosine", 50, shift=4.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 7, 5, generator=g)
    x = x0.clone()
    x[:, :, [2, 5]] = torch.randn(3, 4, 2, 5, generator=g)  # two wrong cells
    scores = torch.rand(3, 7, generator=g) + 1.0
    scores[:, [2, 5]] = torch.tensor([0.2, 0.1])  # ... and the least confident
    m = Oracle(x0)
    out = revise_cells(m, x, s, generator=torch.Generator().manual_seed(1), steps=4, window=0.3,
                       confidence=lambda x0_hat: scores, fraction=2 / 7, eta=eta, return_path=True)
    assert torch.allclose(out.x0, x0, atol=1e-5)
    kept = [0, 1, 3, 4, 6]
    assert torch.equal(out.x0[:, :, kept], x[:, :, kept])
    assert len(m.calls) == 4 and all((t[:, 0, kept] == 0).all() for t in m.calls)
    assert (m.calls[0][:, 0, [2, 5]] == 50).all() and (m.calls[-1][:, 0, [2, 5]] < 50).all()
    assert (out.path[0].x_t[:, :, [2, 5]] != x[:, :, [2, 5]]).all()  # fresh noise, not the old values
    if eta:
        st = out.path[0]
        moved = (st.sigma > 0)[..., None].expand_as(st.x_prev)
        normal = torch.distributions.Normal(st.mean, st.sigma.clamp_min(1e-30)[..., None].expand_as(st.mean))
        want = torch.where(moved, normal.log_prob(st.x_prev), torch.zeros_like(st.x_prev)).flatten(1).sum(-1)
        assert torch.allclose(st.log_prob, want, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="revised fraction"):
        revise_cells(m, x, s, generator=g, steps=4, window=0.3, confidence=lambda x0_hat: scores, fraction=0.0)
    uneven = torch.ones(3, 7, dtype=torch.bool)
    uneven[0, 0] = False
    with pytest.raises(ValueError, match="same number of kept cells"):
        sample_cells(m, x, s, generator=g, steps=4, window=0.3, confidence=lambda x0_hat: scores, keep=uneven)


def test_row_step_per_cell_matches_q_sample_marginals_and_leaves_still_cells():
    s = make_schedule("cosine", 40)
    x0 = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t_hi = torch.tensor([[[30, 20, 0, 40]], [[40, 40, 5, 10]]])
    t = torch.tensor([[[25, 20, 0, 0]], [[30, 40, 0, 3]]])
    mean, sigma = row_step(s, q_sample(x0, t_hi, s, eps), x0, t_hi, t, eta=0.0)
    assert torch.allclose(mean, q_sample(x0, t, s, eps), atol=1e-5)
    still = (t == t_hi)[..., None].expand_as(x0)
    assert torch.equal(mean[still], q_sample(x0, t_hi, s, eps)[still])
    assert sigma.shape == t.shape and (sigma == 0).all()


def test_per_cell_log_probs_are_normal_log_probs():
    """Each stochastic round's log-probability is torch.distributions.Normal's over the cells that
    moved with sigma > 0 (the others are deterministic and not part of the density)."""
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    mean = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([[[0.3, 0.0, 1.2, 0.5]], [[0.0, 0.0, 0.7, 2.0]]])[..., None]  # (B, 1, L, 1)
    mask = sigma > 0
    lp = masked_gaussian_log_prob(x, mean, sigma, mask)
    for b in range(2):
        ref = sum(torch.distributions.Normal(mean[b, :, c].double(), float(sigma[b, 0, c, 0])).log_prob(
            x[b, :, c].double()).sum() for c in range(4) if float(sigma[b, 0, c, 0]) > 0)
        assert math.isclose(float(lp[b]), float(ref), rel_tol=1e-9)

    s = make_schedule("cosine", 50, shift=4.0)
    x0 = torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(2))
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    model = lambda x_t, t, c=None: 0.5 * x_t + 0.1  # any deterministic estimate
    out = sample_cells(model, xT, s, generator=torch.Generator().manual_seed(4), steps=8, window=0.3,
                       confidence=lambda e: e.mean((1, 3)), eta=1.0, return_path=True)
    assert len(out.path) == 8 and any(st.log_prob is not None for st in out.path)
    for st in out.path:
        moving = st.sigma > 0  # (B, 1, L)
        if st.log_prob is None:
            assert not moving.any()
            continue
        for b in range(2):
            cells = [c for c in range(6) if bool(moving[b, 0, c])]
            ref = sum(torch.distributions.Normal(st.mean[b, :, c].double(), float(st.sigma[b, 0, c])).log_prob(
                st.x_prev[b, :, c].double()).sum() for c in cells)
            assert math.isclose(float(st.log_prob[b]), float(ref), rel_tol=1e-9, abs_tol=1e-9)
        assert torch.equal(st.x_prev[~moving[..., None].expand_as(st.x_prev)],
                           st.mean[~moving[..., None].expand_as(st.mean)])


def test_per_cell_denoiser_equals_per_row_when_levels_agree():
    """A per-cell call whose cells share one level is the per-row call with that level on every row
    (both keep the puzzle row clean); the adaLN path differs, the function does not."""
    torch.manual_seed(0)
    cfg = DenoiserConfig(hidden=32, layers=2, heads=2, self_cond=True, latent_cond=True)
    m = Denoiser(cfg, 3, 10, 8, 5, cell_window=0.25)
    for prm in m.parameters():
        prm.data.normal_(0, 0.1)
    x, pz, ts = torch.randn(2, 3, 10, 8), torch.randint(0, 5, (2, 10)), torch.tensor([7, 30])
    per_cell = m(x, ts[:, None, None].expand(2, 1, 10), pz)
    per_row = m(x, ts[:, None].expand(2, 3), pz)
    assert torch.allclose(per_cell, per_row, atol=1e-5)
    t = torch.randint(0, 50, (2, 1, 10))
    mixed = m(x, t, pz)
    t2 = t.clone()
    t2[:, 0, 3] = (t2[:, 0, 3] + 20) % 50  # another level at one cell changes the estimate
    assert not torch.allclose(m(x, t2, pz), mixed)
    with pytest.raises(ValueError, match="per-cell steps"):
        m(x, torch.zeros(2, 1, 9, dtype=torch.long), pz)
    with pytest.raises(ValueError, match="not both"):
        Denoiser(cfg, 3, 10, 8, 5, row_lag=0.5, cell_window=0.25)


def test_per_cell_loss_ignores_clean_cells_and_draw_levels_orders_prefix_first():
    s = make_schedule("cosine", 50)
    x0 = torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[[0, 10, 20, 0, 30, 40]], [[5, 0, 0, 50, 1, 2]]])
    logits = torch.randn(2, 3, 5, 7)  # 5 decoded cells: one prefix position
    targets = torch.randint(0, 7, (2, 3, 5))
    est = x0 + 0.3
    base = distillation_loss(est, x0, t, s, weighting="uniform", ce_logits=logits, ce_targets=targets, ce_weight=1.0)
    est2, logits2 = est.clone(), logits.clone()
    clean = (t == 0)[:, 0]  # (B, L)
    est2[clean[:, None].expand(2, 3, 6)] += 5.0  # clean cells: no loss
    logits2[clean[:, None, 1:].expand(2, 3, 5)] += torch.randn(int(clean[:, 1:].sum()) * 3, 7)
    other = distillation_loss(est2, x0, t, s, weighting="uniform", ce_logits=logits2, ce_targets=targets,
                              ce_weight=1.0)
    assert torch.allclose(base.loss, other.loss) and math.isclose(float(base.mse), 0.09, rel_tol=1e-5)
    cfg = Distill(row_noise="cells", cell_window=0.25, T=50, sample_steps=10)
    t, t_hi = draw_levels(cfg, 64, 3, torch.Generator().manual_seed(0), cells=6, prefix=1)
    assert t.shape == t_hi.shape == (64, 1, 6) and (t_hi >= t).all() and (t_hi > t).any()
    assert (t[:, 0, :1] <= t[:, 0, 1:]).all()  # the prefix position starts first


def test_top_margin_is_the_gap_between_the_two_likeliest():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]]))
    assert torch.allclose(top_margin(logits), torch.tensor([0.3, 0.05]), atol=1e-6)


def test_generate_revise_continues_a_per_cell_chain_and_refuses_other_models():
    """`generate(..., revise=(rounds, fraction, steps))`: the per-cell chain's calls, then each
    round's; zero rounds is the chain alone, bitwise; a model without per-cell levels refuses it."""
    from tdrm.diffusion.sampling import generate
    torch.manual_seed(0)
    cfg = DenoiserConfig(hidden=32, layers=2, heads=2, self_cond=True, latent_cond=True)
    m = Denoiser(cfg, 3, 10, 8, 5, cell_window=0.25)
    for prm in m.parameters():
        prm.data.normal_(0, 0.1)
    s = make_schedule("cosine", 50)
    pz = torch.randint(0, 5, (2, 10))
    conf = lambda x0_hat: x0_hat[:, -1].square().mean(-1)  # noqa: E731  (B, L)
    run = lambda **kw: generate(m, pz, s, sampler="ddim", steps=5, eta=0.0,  # noqa: E731
                                generator=torch.Generator().manual_seed(1), confidence=conf, **kw)
    base, zero = run(), run(revise=(0, 0.3, 4))
    assert torch.equal(base, zero)
    out = run(revise=(2, 0.3, 4), return_path=True)
    assert len(out.path) == 5 + 2 * 4
    first = out.path[5].t[:, 0]  # (B, L): the first revision call's levels
    assert ((first == 50).sum(-1) == 3).all() and ((first == 0).sum(-1) == 7).all()  # 3 of 10 re-noised, 7 kept
    shared = Denoiser(cfg, 3, 10, 8, 5)
    with pytest.raises(ValueError, match="per-cell chains"):
        generate(shared, pz, s, sampler="ddim", steps=5, eta=0.0, generator=torch.Generator(), revise=(1, 0.3, 4))
