"""The forward-process estimators' pure pieces (awm, spg, rft) against hand-computed cases."""
import pytest
import torch

from tdrm.rl.estimators import (awm_advantages, awm_loss, rft_keep, spg_advantages, spg_bounds, spg_loss,
                                 stratified_levels)


def test_awm_advantages_centre_per_group_scale_by_the_batch_std_and_lie_in_unit_range():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3], [1.1, 0.0, 0.0, 0.0]])
    a = awm_advantages(r, eps=0.0, clip=5.0)
    std = r.std(unbiased=False)
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std / 5)
    assert torch.equal(a[1], torch.zeros(4))  # a constant group carries no signal
    assert torch.allclose(a[2], (r[2] - r[2].mean()) / std / 5)
    assert torch.allclose(a.sum(-1), torch.zeros(3), atol=1e-6)
    big = awm_advantages(torch.tensor([[100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 8]), eps=0.0, clip=1.0)
    assert big.abs().max() <= 1.0 and big[0, 0] == 1.0  # clipped to +-clip, then divided by it


def test_stratified_levels_draw_one_level_per_stratum_and_are_seeded():
    g = torch.Generator().manual_seed(0)
    t = stratified_levels(500, 4, 1, 180, g)
    assert t.shape == (500, 4) and t.dtype == torch.long
    edges = torch.linspace(1, 181, 5)
    for j in range(4):
        assert (t[:, j] >= edges[j].floor()).all() and (t[:, j] < edges[j + 1]).all()
    assert t.min() == 1 and t.max() == 180  # the whole range is reached
    assert torch.equal(t, stratified_levels(500, 4, 1, 180, torch.Generator().manual_seed(0)))
    for bad in [(0, 5), (6, 5)]:
        with pytest.raises(ValueError, match="lo"):
            stratified_levels(2, 2, *bad, g)


def test_awm_loss_pulls_toward_positive_samples_and_the_anchor_bounds_the_push():
    x0 = torch.tensor([[1.0], [-1.0]])  # a good sample (A = +1) and a bad one (A = -1)
    adv = torch.tensor([1.0, -1.0])
    f = torch.zeros(1, requires_grad=True)  # one prediction for both (same input)
    ref = torch.zeros(1)

    def loss(beta):
        err = (f - x0).square()  # (2, 1)
        return awm_loss(err, adv, (f - ref).square().expand(2, 1), beta)
    loss(0.0).backward()
    assert f.grad.item() < 0  # descending moves f toward the good sample
    # hand value: mean(A * err) at f = 0 is 0 (equal errors); the anchor adds beta * ||f - ref||^2
    with torch.no_grad():
        f.fill_(0.5)
    assert loss(2.0).item() == pytest.approx(0.5 * (0.25 - 2.25) + 2.0 * 0.25)
    # with the anchor the minimum is finite: d/df [A-term] = -2, anchor 2 beta f -> f* = 1 / beta
    f2 = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([f2], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        awm_loss((f2 - x0).square(), adv, (f2 - ref).square().expand(2, 1), 4.0).backward()
        opt.step()
    assert f2.item() == pytest.approx(0.25, abs=1e-4)
    with pytest.raises(ValueError, match="must agree"):
        awm_loss(torch.zeros(2, 3), adv, torch.zeros(2, 2), 1.0)


def test_spg_advantages_are_the_centred_rewards_without_any_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3], [1.1, 0.0, 0.0, 0.1]])
    a = spg_advantages(r)
    assert torch.allclose(a, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [0.8, -0.3, -0.3, -0.2]]))
    assert torch.equal(a[1], torch.zeros(4))  # a constant group carries no signal, exactly


def test_spg_bounds_sandwich_and_their_limits():
    g = torch.Generator().manual_seed(0)
    err = torch.rand(6, 4, generator=g) * 2
    for beta in [0.01, 0.5, 1.0, 3.0]:
        lo, up = spg_bounds(err, beta)
        assert lo.shape == up.shape == (6,)
        assert (up >= lo - 1e-6).all()  # Jensen: log-mean-exp >= mean
        assert (up > lo + 1e-4).all() or beta == 0.01  # strictly above when the errors differ
    lo, up = spg_bounds(err.double(), 1e-4)
    assert torch.allclose(up, lo, atol=1e-4) and not torch.allclose(up, lo, atol=1e-7)  # beta -> 0: the ELBO surrogate
    lo, up = spg_bounds(err, 200.0)
    assert torch.allclose(up, -err.min(-1).values, atol=0.02)  # large beta: the best level
    flat = torch.full((2, 4), 0.7)
    lo, up = spg_bounds(flat, 2.0)
    assert torch.allclose(lo, up) and torch.allclose(lo, torch.full((2,), -0.7))
    # hand value: err (0, 1), beta 1: log((1 + e^-1) / 2)
    assert spg_bounds(torch.tensor([[0.0, 1.0]]), 1.0)[1].item() == pytest.approx(float(torch.log(torch.tensor((1 + torch.e ** -1) / 2))))
    with pytest.raises(ValueError, match="spg_beta"):
        spg_bounds(err, 0.0)


def test_spg_loss_uses_the_lower_bound_for_positives_and_the_mixture_for_negatives():
    err = torch.tensor([[0.1, 0.9], [0.2, 1.0], [0.4, 0.4]], requires_grad=True)  # (S, M)
    adv = torch.tensor([0.5, -0.5, 0.0])
    anchor = torch.zeros(3, 2)
    loss = spg_loss(err, adv, anchor, beta=1.0, mix=1.0, anchor_beta=0.0)
    lo, up = spg_bounds(err.detach(), 1.0)
    assert loss.item() == pytest.approx(float(-(0.5 * lo[0] - 0.5 * up[1]) / 3))
    loss.backward()
    # positive sample: d/d err = A / (3 M) on every level (the ELBO weights levels uniformly)
    assert torch.allclose(err.grad[0], torch.full((2,), 0.5 / 6))
    # negative sample, pure upper bound: weights softmax(-beta err), heaviest where the error is least
    w = torch.softmax(-err.detach()[1], -1)
    assert torch.allclose(err.grad[1], -0.5 / 3 * w) and err.grad[1, 0] < err.grad[1, 1] < 0
    assert torch.equal(err.grad[2], torch.zeros(2))  # zero advantage: no gradient
    # mix 0 is the one-sided ELBO ablation; mix 0.5 lies between
    e0 = spg_loss(err.detach(), adv, anchor, 1.0, 0.0, 0.0)
    e5 = spg_loss(err.detach(), adv, anchor, 1.0, 0.5, 0.0)
    assert e0.item() == pytest.approx(float(-(0.5 * lo[0] - 0.5 * lo[1]) / 3))
    assert e5.item() == pytest.approx((e0.item() + loss.item()) / 2)
    assert spg_loss(err.detach(), adv, torch.ones(3, 2), 1.0, 0.0, 0.3).item() == pytest.approx(e0.item() + 0.3)
    with pytest.raises(ValueError, match="spg_mix"):
        spg_loss(err.detach(), adv, anchor, 1.0, 1.5, 0.0)
    with pytest.raises(ValueError, match="must agree"):
        spg_loss(err.detach(), adv, torch.zeros(3, 3), 1.0, 0.5, 0.0)


def test_rft_keeps_exactly_the_solved_samples():
    r = torch.tensor([[1.1, 0.05, 1.0, 0.99]])
    assert rft_keep(r).tolist() == [[True, False, True, False]]


def test_weighted_order_is_a_seeded_permutation_that_puts_heavy_items_first():
    import numpy as np

    from tdrm.rl.estimators import curriculum_weights, weighted_order
    ratings = np.array([0, 10, -1, 2] * 500)
    w = curriculum_weights(ratings, 1.0)
    assert w[:4].tolist() == [1.0, 11.0, 1.0, 3.0]  # unknown (-1) counts as 0
    assert curriculum_weights(ratings, 0.0).tolist() == [1.0] * 2000  # power 0: uniform
    o = weighted_order(w, np.random.default_rng(0))
    assert sorted(o.tolist()) == list(range(2000))
    assert np.array_equal(o, weighted_order(w, np.random.default_rng(0)))
    rank = np.empty(2000)
    rank[o] = np.arange(2000)
    # Gumbel-top-k: the first draw is item i with probability w_i / sum w, so rating-10 puzzles
    # (weight 11 of 16 per block of four) fill most of the first places
    assert (ratings[o[:200]] == 10).mean() > 0.6
    assert rank[ratings == 10].mean() < rank[ratings == 2].mean() < rank[ratings == 0].mean()
    with pytest.raises(ValueError, match="positive"):
        weighted_order(np.array([1.0, 0.0]), np.random.default_rng(0))
