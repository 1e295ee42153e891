"""GRPO pieces against hand-computed cases, the update's invariants on real rollouts, a toy problem
where one RL phase really raises the reward, and the stage on the tiny profile."""
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tdrm.data.board import SHAPES, parse, to_tokens
from tdrm.diffusion.logprob import gaussian_log_prob, step_log_prob_mean
from tdrm.diffusion.schedules import broadcast_levels
from tdrm.diffusion.samplers import Sample
from tdrm.diffusion.schedules import make_schedule
from tdrm.rl.grpo import clipped_ratio_loss, elbo_surrogate_loss, gaussian_kl, group_advantages
from tdrm.rl.estimators import awm_advantages, spg_advantages
from tdrm.rl.phase import Batch, UPDATES, concat, grpo_update, renoise_levels, step_log_prob, stochastic, subset
from tdrm.data.board import constraints, valid_boards as solved
from tdrm.rl.reward import reward
from tdrm.diffusion.sampling import generate

SOL = "1234341221434321"


def _b(s):
    return torch.as_tensor(parse(s)).long()


def test_reward_checks_solution_units_and_givens_without_labels():
    puz = _b("1...............")
    sol = _b(SOL)
    swapped = sol.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # rows still permutations, two columns and the given broken
    other = _b("2143432112343412")  # a valid grid that changes the given
    boards = torch.stack([sol, swapped, other])
    assert solved(puz.expand(3, -1), boards, SHAPES[16]).tolist() == [True, False, False]
    sat, tot = constraints(puz.expand(3, -1), boards, SHAPES[16])
    # 12 units x 4 digits + 1 given = 49; swapping cells 0,1 breaks digits 1,2 in columns 0,1 (4)
    # and both boxes keep them; the given is lost: 49 - 4 - 1 = 44. `other` only loses the given.
    assert tot.tolist() == [49, 49, 49] and sat.tolist() == [49, 44, 48]
    r = reward(puz.expand(3, -1), boards, SHAPES[16], dense_weight=0.1)
    assert torch.allclose(r, torch.tensor([1.1, 0.1 * 44 / 49, 0.1 * 48 / 49]))
    zeros = torch.zeros_like(sol)[None]  # out-of-range digits satisfy nothing
    assert constraints(puz[None], zeros, SHAPES[16])[0].item() == 0


def test_group_advantages_normalise_and_constant_groups_get_zero():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]])
    a = group_advantages(r, eps=0.0)
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0])) and torch.equal(a[1], torch.zeros(4))
    big = group_advantages(torch.tensor([[10.0] + [0.0] * 99]), eps=0.0, clip=5.0)
    assert big.max().item() == 5.0


def test_clipped_ratio_loss_hand_case():
    ratio = torch.tensor([1.0005, 1.002, 0.998], dtype=torch.float64)  # float64: r - 1 - log r cancels
    old = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    loss, st = clipped_ratio_loss(old + ratio.log(), old, adv, clip=1e-3)
    # min(rA, clip(r)A): 1.0005 | min(-1.002, -1.001) = -1.002 | min(1.996, 1.998) = 1.996
    assert math.isclose(loss.item(), -(1.0005 - 1.002 + 1.996) / 3, rel_tol=1e-6)
    assert math.isclose(st["clip_fraction"], 2 / 3, rel_tol=1e-6)
    k3 = sum(r - 1 - math.log(r) for r in (1.0005, 1.002, 0.998)) / 3
    assert math.isclose(st["approx_kl"], k3, rel_tol=1e-6)


def test_gaussian_kl_closed_form_and_zero_at_reference():
    m = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_kl(m, m, 0.3), torch.zeros(3))
    ref = m + 0.1
    want = torch.distributions.kl_divergence(torch.distributions.Normal(m.double(), 0.3),
                                             torch.distributions.Normal(ref.double(), 0.3)).flatten(1).mean(-1)
    assert torch.allclose(gaussian_kl(m, ref, 0.3).double(), want)


def test_per_cell_step_log_prob_and_kl_count_only_the_moving_coordinates():
    """A per-cell step's sigma (B, 1, L) is 0 on cells that do not move: the per-dimension mean
    log-prob and the KL are torch.distributions.Normal's over the other coordinates only."""
    g = torch.Generator().manual_seed(0)
    x, mean, ref = (torch.randn(2, 3, 4, 5, generator=g) for _ in range(3))
    sigma = torch.tensor([[[0.3, 0.0, 0.5, 0.0]], [[0.0, 0.0, 0.2, 0.0]]], dtype=torch.float64)  # (B, 1, L)
    lp, kl = step_log_prob_mean(x, mean, sigma), gaussian_kl(mean, ref, sigma)
    for b in range(2):
        cells = sigma[b, 0].nonzero().squeeze(-1)
        sd = sigma[b, 0, cells][None, :, None].expand(3, -1, 5)
        want = torch.distributions.Normal(mean[b][:, cells].double(), sd).log_prob(x[b][:, cells].double())
        assert torch.allclose(lp[b], want.mean(), rtol=0, atol=1e-9)
        want_kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean[b][:, cells].double(), sd),
                                                    torch.distributions.Normal(ref[b][:, cells].double(), sd))
        assert torch.allclose(kl[b].double(), want_kl.mean(), rtol=1e-5)
    per_row = torch.tensor([0.4, 0.0, 0.1], dtype=torch.float64)  # (K,): row 1 does not move
    keep = torch.tensor([0, 2])
    want = torch.distributions.Normal(mean[:, keep].double(), per_row[keep].view(1, -1, 1, 1)
                                      ).log_prob(x[:, keep].double()).flatten(1).mean(-1)
    assert torch.allclose(step_log_prob_mean(x, mean, per_row), want, rtol=0, atol=1e-9)
    assert torch.equal(step_log_prob_mean(x, mean, 0.3), gaussian_log_prob(x, mean, 0.3, reduce="mean"))


def test_renoise_levels_take_the_form_the_model_was_trained_on():
    """Shared levels t (S, M) -> per row on the rolling schedule, per cell on a random cell order
    (prefix first) at the same progress 1 - t / T; lag 0 or window 1 give t on every row or cell."""
    from tdrm.diffusion.losses import masked_sample_mse
    from tdrm.diffusion.schedules import cell_levels, row_levels
    sched = make_schedule("cosine", 40)
    t = torch.tensor([[1, 20, 40], [5, 30, 39]])
    g = torch.Generator().manual_seed(0)
    shared = SimpleNamespace()
    assert renoise_levels(shared, sched, t, g) is t
    rows = SimpleNamespace(row_lag=0.5, K=4)
    want = row_levels(1 - t.double() / 40, 4, 0.5, 40)
    assert torch.equal(renoise_levels(rows, sched, t, g), want) and want.shape == (2, 3, 4)
    assert torch.equal(renoise_levels(SimpleNamespace(row_lag=0.0, K=4), sched, t, g), t[..., None].expand(-1, -1, 4))
    one = SimpleNamespace(cell_window=1.0, L=6, P=1)
    assert torch.equal(renoise_levels(one, sched, t, g), t[..., None, None].expand(-1, -1, 1, 6))
    cells = SimpleNamespace(cell_window=0.25, L=6, P=1)
    a = renoise_levels(cells, sched, t, torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 1, 6) and torch.equal(a, renoise_levels(cells, sched, t, torch.Generator().manual_seed(1)))
    assert bool((a[..., 0, 0] <= a[..., 0, 1:].min(-1).values).all())  # the prefix position starts first
    in_order = cell_levels(1 - t.reshape(-1).double() / 40, torch.arange(6).expand(6, -1), 0.25, 40).view(2, 3, 6)
    assert torch.equal(a[..., 0, :].sort(-1).values, in_order.sort(-1).values)  # the schedule's levels, permuted
    assert any(not torch.equal(a[0, 1, 0, 1:], a[1, 1, 0, 1:].roll(k)) for k in range(5))  # orders differ
    x0, hat = torch.zeros(2, 4, 6, 3), torch.ones(2, 4, 6, 3)
    hat[:, :, 2] = 5.0  # a wrong cell that is clean context: not scored
    lv = torch.tensor([[[3, 3, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 0]]])
    assert masked_sample_mse(hat, x0, lv).tolist() == [1.0, 0.0]


def test_subset_and_concat_keep_the_per_cell_levels_and_order_of_each_sample():
    from tdrm.config import Denoiser as DenoiserConfig
    from tdrm.models.denoiser import Denoiser
    model = Denoiser(DenoiserConfig(hidden=16, layers=2, heads=2), 2, 5, 3, 7, cell_window=0.4)
    puzzle = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(1))
    scores = torch.rand(4, 5, generator=torch.Generator().manual_seed(3))
    s = generate(model, puzzle, make_schedule("cosine", 30), sampler="ddim", steps=4, eta=1.0,
                 generator=torch.Generator().manual_seed(2), return_path=True,
                 confidence=lambda x: scores)  # a fixed, different order for each sample
    assert any(not torch.equal(st.t[1], st.t[3]) for st in s.path)  # the samples' cell orders differ
    idx = torch.tensor([3, 1])
    sub = subset(s, idx)
    for a, b in zip(sub.path, s.path):
        assert a.t.shape == (2, 1, 5) and torch.equal(a.t, b.t[idx]) and torch.equal(a.sigma, b.sigma[idx])
        assert torch.equal(a.t_prev, b.t_prev[idx]) and torch.equal(a.x_t, b.x_t[idx])
    both = concat([Batch(puzzle[idx], sub, torch.ones(2), False), Batch(puzzle, s, torch.ones(4), False)])
    assert all(st.t.shape == (6, 1, 5) and torch.equal(st.t[2:], b.t) for st, b in zip(both.sample.path, s.path))
    # the recorded cell order (most confident first) travels with each sample (rl.renoise_order: rollout)
    assert torch.equal(s.ranks, scores.argsort(-1, descending=True).argsort(-1))
    assert torch.equal(sub.ranks, s.ranks[idx])
    assert torch.equal(both.sample.ranks, torch.cat([s.ranks[idx], s.ranks]))


def test_elbo_surrogate_signs_and_trust_cap():
    lp = torch.tensor([1.0, 1.0, 2.0], requires_grad=True)
    ref = torch.tensor([1.0, 1.0, 1.0])
    adv = torch.tensor([1.0, -1.0, -1.0])
    loss = elbo_surrogate_loss(lp, ref, adv, negative_weight=0.5, trust=0.1)
    loss.backward()
    # positive: lower its denoising loss; negative below the cap: raise it; above the cap: no push
    assert lp.grad.tolist() == pytest.approx([1 / 3, -0.5 / 3, 0.0])


class Toy(torch.nn.Module):
    """The exact denoiser of data N(point, s^2 I) with a learned point: x0_hat = point +
    sqrt(ab) s^2 / (ab s^2 + 1 - ab) (x_t - sqrt(ab) point). Its chain ends randomly around the point,
    and fitting its denoising loss to samples moves the point to their mean, so both the reverse-
    chain estimators and the forward-process ones (which refit the denoiser) have a consistent target."""

    K, L, C = 1, 1, 2
    cfg = SimpleNamespace(self_cond=False)

    def __init__(self, schedule, s=0.5):
        super().__init__()
        self.point = torch.nn.Parameter(torch.zeros(2))
        self.ab, self.s2 = schedule.alpha_bar.float(), s * s

    def forward(self, x_t, t, puzzle, prev=None):
        ab = self.ab[t].view(-1, *([1] * (x_t.dim() - 1)))
        gain = ab.sqrt() * self.s2 / (ab * self.s2 + 1 - ab)
        return self.point + gain * (x_t - ab.sqrt() * self.point)


def _toy_phase(estimator, phases=15, seed=0):
    torch.manual_seed(0)
    target = torch.tensor([1.0, -1.0])
    sched = make_schedule("cosine", 20)
    model = Toy(sched)
    ref = Toy(sched).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cfg = SimpleNamespace(clip=0.2, beta=0.0, eta=1.0, sigma_floor=0.0, inner_epochs=2, train_step_fraction=1.0,
                          grad_clip=0.0, elbo_negative_weight=0.5, elbo_trust=0.5, awm_levels=3, awm_max_level=0.9,
                          anchor_beta=0.02, spg_beta=1.0, spg_mix=0.5, renoise_order="fresh")
    gen = torch.Generator().manual_seed(seed)
    update = UPDATES[estimator]
    means = []
    for _ in range(phases):
        puzzle = torch.zeros(32, 1, dtype=torch.long)  # 4 groups of 8
        s = generate(model, puzzle, sched, sampler="ddim", steps=5, eta=1.0, generator=gen, return_path=True)
        r = -(s.x0.reshape(32, 2) - target).square().sum(-1)
        means.append(r.mean().item())
        if estimator == "rft":  # "valid" = the best quarter of each group (a toy stand-in for the check)
            keep = (r.view(4, 8) >= r.view(4, 8).quantile(0.75, dim=-1, keepdim=True)).reshape(-1)
            batch = Batch(puzzle[keep], subset(s, keep.nonzero().squeeze(-1)), torch.ones(int(keep.sum())), False)
        else:
            adv = {"awm": awm_advantages, "spg": spg_advantages}.get(estimator, group_advantages)(r.view(4, 8)).reshape(-1)
            batch = Batch(puzzle, s, adv, False)
        update(model, ref, opt, batch, sched, cfg, gen)
    return means


@pytest.mark.parametrize("estimator", ["grpo", "elbo", "awm", "spg", "rft"])
def test_one_rl_phase_on_a_toy_problem_raises_the_mean_reward(estimator):
    a = _toy_phase(estimator)
    assert np.mean(a[-3:]) > np.mean(a[:3]) + 1.0, a  # starts near -2 (the point at 0, target at (1, -1))
    assert _toy_phase(estimator) == a  # seeded


class ToyLevels(torch.nn.Module):
    """Toy's exact denoiser with one noise level per trajectory row (3 rows of one cell) or per cell
    (one row of 3 cells): every (row, cell) is independent data N(point, s^2 I), so the per-row or
    per-cell exact denoiser is Toy's formula at each row's (cell's) own level."""

    cfg = SimpleNamespace(self_cond=False)
    P = 0

    def __init__(self, schedule, kind: str, s=0.5):
        super().__init__()
        self.K, self.L, self.C = (3, 1, 2) if kind == "rows" else (1, 3, 2)
        self.row_lag, self.cell_window = (0.5, None) if kind == "rows" else (None, 0.5)
        self.point = torch.nn.Parameter(torch.zeros(self.K, self.L, self.C))
        self.ab, self.s2 = schedule.alpha_bar.float(), s * s

    def forward(self, x_t, t, puzzle, prev=None):
        want = (x_t.shape[0], self.K) if self.row_lag is not None else (x_t.shape[0], 1, self.L)
        assert tuple(t.shape) == want, (tuple(t.shape), want)  # the model's own form of levels, never shared
        ab = self.ab[t][..., None, None] if t.dim() == 2 else self.ab[t][..., None]
        gain = ab.sqrt() * self.s2 / (ab * self.s2 + 1 - ab)
        return self.point + gain * (x_t - ab.sqrt() * self.point)


TARGET = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]])  # one target point per row (cell)


def _toy_levels_phase(estimator, kind, phases=15, seed=0, order="fresh", temperature=0.0, ranks=None):
    torch.manual_seed(0)
    sched = make_schedule("cosine", 20)
    model, ref = ToyLevels(sched, kind), ToyLevels(sched, kind).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cfg = SimpleNamespace(clip=0.2, beta=0.0, eta=1.0, sigma_floor=0.0, inner_epochs=2, train_step_fraction=1.0,
                          grad_clip=0.0, elbo_negative_weight=0.5, elbo_trust=0.5, awm_levels=3, awm_max_level=0.9,
                          anchor_beta=0.02, spg_beta=1.0, spg_mix=0.5, renoise_order=order)
    gen = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(phases):
        puzzle = torch.zeros(32, 3, dtype=torch.long)  # 4 groups of 8
        s = generate(model, puzzle, sched, sampler="ddim", steps=5, eta=1.0, generator=gen, return_path=True,
                     confidence=lambda x: -x[:, 0].square().sum(-1), order_temperature=temperature)
        if ranks is not None:
            ranks.append(s.ranks)
        r = -(s.x0.reshape(32, 3, 2) - TARGET).square().sum((-1, -2))
        means.append(r.mean().item())
        if estimator == "rft":
            keep = (r.view(4, 8) >= r.view(4, 8).quantile(0.75, dim=-1, keepdim=True)).reshape(-1)
            batch = Batch(puzzle[keep], subset(s, keep.nonzero().squeeze(-1)), torch.ones(int(keep.sum())), False)
        else:
            adv = {"awm": awm_advantages, "spg": spg_advantages}.get(estimator, group_advantages)(r.view(4, 8)).reshape(-1)
            batch = Batch(puzzle, s, adv, False)
        UPDATES[estimator](model, ref, opt, batch, sched, cfg, gen)
    return means, model.point.detach().reshape(3, 2)


@pytest.mark.parametrize("kind", ["rows", "cells"])
@pytest.mark.parametrize("estimator", ["grpo", "elbo", "awm", "spg", "rft"])
def test_rl_on_per_row_and_per_cell_chains_raises_the_reward_on_a_toy_problem(estimator, kind):
    """Every estimator trains a model with one noise level per row or per cell on its own chain
    (`sample_rows` / `sample_cells`): the mean reward rises (it starts near -3.5: every point at 0)."""
    a, point = _toy_levels_phase(estimator, kind)
    assert np.mean(a[-3:]) > np.mean(a[:3]) + 1.0, a
    assert (point - TARGET).norm() < TARGET.norm()  # the points moved toward their targets
    assert _toy_levels_phase(estimator, kind)[0] == a  # seeded


@pytest.mark.parametrize("estimator", ["elbo", "awm", "spg", "rft"])
def test_forward_estimators_re_noising_in_the_rollout_order_train_a_per_cell_chain(estimator, monkeypatch):
    """`renoise_order: rollout`: the forward-process estimators re-noise each sample in the cell
    order its own rollout chose (`Sample.ranks`), never a fresh one, and still raise the reward."""
    import tdrm.rl.phase as phase
    seen = []
    real = phase.renoise_levels

    def spy(model, schedule, t, generator, ranks=None):
        seen.append(ranks)
        return real(model, schedule, t, generator, ranks)
    monkeypatch.setattr(phase, "renoise_levels", spy)
    a, point = _toy_levels_phase(estimator, "cells", order="rollout")
    assert seen and all(r is not None and r.shape[-1] == 3 for r in seen)
    assert np.mean(a[-3:]) > np.mean(a[:3]) + 1.0, a
    assert (point - TARGET).norm() < TARGET.norm()
    seen.clear()
    assert _toy_levels_phase(estimator, "cells", order="fresh")[0] != a  # the order changes what is trained
    assert seen and all(r is None for r in seen)


@pytest.mark.parametrize("estimator", ["awm", "rft"])
def test_forward_estimators_on_rollouts_with_a_drawn_cell_order(estimator):
    """`order_temperature` > 0: the rollouts of one group start their cells in different orders
    (with tau = 0 they take one), and re-noising each in its own order still raises the reward."""
    ranks = []
    a, point = _toy_levels_phase(estimator, "cells", order="rollout", temperature=1.0, ranks=ranks)
    assert np.mean(a[-3:]) > np.mean(a[:3]) + 1.0, a
    assert (point - TARGET).norm() < TARGET.norm()
    assert _toy_levels_phase(estimator, "cells", order="rollout", temperature=1.0)[0] == a  # seeded
    ranks0 = []
    _toy_levels_phase(estimator, "cells", order="rollout", ranks=ranks0)
    # once the points have moved off 0 (after the first phases), tau = 0 gives the 8 rollouts of a
    # group one order; tau = 1 several
    assert all(len(torch.unique(r[:8], dim=0)) == 1 for r in ranks0[5:])
    assert all(len(torch.unique(r[:8], dim=0)) > 1 for r in ranks[5:])
    rows = ToyLevels(make_schedule("cosine", 20), "rows")  # one level per row: no cell order to draw
    with pytest.raises(ValueError, match="cell-order temperature"):
        generate(rows, torch.zeros(2, 3, dtype=torch.long), make_schedule("cosine", 20), sampler="ddim", steps=3,
                 eta=1.0, generator=torch.Generator(), order_temperature=0.5)


def test_renoise_levels_in_given_orders():
    """Given ranks (S, L), every level of sample s is on the cell-order schedule of its own ranks;
    wrong shapes are refused."""
    from tdrm.diffusion.schedules import cell_levels
    sched = make_schedule("cosine", 40)
    cells = SimpleNamespace(cell_window=0.25, L=6, P=1)
    t = torch.tensor([[1, 20, 40], [5, 30, 39]])
    ranks = torch.tensor([[0, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5]])
    got = renoise_levels(cells, sched, t, torch.Generator().manual_seed(0), ranks)
    for s in range(2):
        want = cell_levels(1 - t[s].double() / 40, ranks[s].expand(3, -1), 0.25, 40)  # (3, 1, 6)
        assert torch.equal(got[s], want)
    with pytest.raises(ValueError, match="ranks must be"):
        renoise_levels(cells, sched, t, torch.Generator(), ranks[:, :5])


LEVELS = {"shared": {}, "rows": {"row_lag": 0.5}, "cells": {"cell_window": 0.4}}


@pytest.mark.parametrize("levels", list(LEVELS))
@pytest.mark.parametrize("latent", [False, True], ids=["self_cond", "latent_cond"])
def test_update_starts_at_ratio_one_and_zero_kl_to_itself(latent, levels):
    """The recorded rollout's step log-probs are recomputed exactly: the step's input includes the
    previous estimate and, for latent_cond, the previous call's hidden state (recorded in the path);
    a per-row or per-cell chain's steps are recomputed at their recorded levels."""
    from tdrm.config import Denoiser as DenoiserConfig
    from tdrm.models.denoiser import Denoiser
    cfg = DenoiserConfig(hidden=16, layers=2, heads=2, self_cond=True, latent_cond=latent)
    model = Denoiser(cfg, 2, 5, 3, 7, **LEVELS[levels])
    ref = Denoiser(cfg, 2, 5, 3, 7, **LEVELS[levels]).requires_grad_(False)
    with torch.no_grad():  # leave adaLN-Zero's start so the step means depend on the weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ref.load_state_dict(model.state_dict())
    sched = make_schedule("cosine", 30)
    puzzle = torch.randint(0, 7, (6, 5), generator=torch.Generator().manual_seed(1))
    s = generate(model, puzzle, sched, sampler="ddim", steps=4, eta=1.0, generator=torch.Generator().manual_seed(2),
                 return_path=True, confidence=lambda x: x[:, -1].sum(-1))
    assert all((st.hidden is not None) == latent for st in s.path)
    batch = Batch(puzzle, s, torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0]), True)
    if latent:  # without the recorded hidden state the step would not be the one sampled
        lost = Batch(puzzle, Sample(s.x0, [replace(st, hidden=None) for st in s.path]), batch.adv, True)
        assert not torch.allclose(step_log_prob(model, lost, 1, sched, 1.0, 0.0)[0],
                                  step_log_prob_mean(s.path[1].x_prev, s.path[1].mean, s.path[1].sigma))
    noisy = [i for i, st in enumerate(s.path) if stochastic(st)]
    assert len(noisy) >= 2 and noisy[0] == 0
    for i in noisy:
        st = s.path[i]
        lp, _, sigma = step_log_prob(model, batch, i, sched, 1.0, 0.0)
        old = step_log_prob_mean(st.x_prev, st.mean, st.sigma)
        if levels == "shared":
            assert sigma == st.sigma and torch.allclose(old, gaussian_log_prob(st.x_prev, st.mean, st.sigma) / 30)
        else:  # the recorded sum over the moving coordinates, per coordinate
            assert torch.equal(sigma, st.sigma)
            count = (broadcast_levels(st.sigma, st.x_prev) > 0).expand_as(st.x_prev).flatten(1).sum(-1)
            assert torch.allclose(old * count, st.log_prob, rtol=0, atol=1e-9)
        assert torch.allclose(lp, old, rtol=0, atol=1e-9)
    cfg = SimpleNamespace(clip=1e-3, beta=0.02, eta=1.0, sigma_floor=0.0, inner_epochs=1, train_step_fraction=1.0,
                          grad_clip=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    st = grpo_update(model, ref, opt, batch, sched, cfg, torch.Generator().manual_seed(0))
    assert st["ratio_first_epoch"] == pytest.approx(1.0, abs=1e-9) and st["kl"] == 0.0
    assert st["grad_norm"] > 0 and any(not torch.equal(a, b) for a, b in
                                       zip(model.state_dict().values(), ref.state_dict().values()))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny teacher, its traces and a briefly distilled TDRM (the stage's input)."""
    from tdrm.config import Traces
    from tdrm.checkpoint import load_teacher
    from tdrm.traces.record import record
    from tdrm.train.distill import train_distill

    from ..conftest import tiny_params, tiny_teacher
    d = tmp_path_factory.mktemp("rl")
    tiny_teacher(d, 60)
    teacher, _ = load_teacher(d / "t.pt")
    record(teacher, d / "t.pt", d, d / "tr", Traces(limit=20, shard_size=16), 0, "cpu", progress=False)
    train_distill(tiny_params({"distill": {"steps": 20, "eval_every": 0}}), d / "tr", teacher, d / "tdrm.pt",
                  progress=False)
    return d


def test_rl_stage_on_the_tiny_profile(distilled, tiny_params_file, tmp_path):
    from tdrm.pipeline import rl_stage
    from tdrm.checkpoint import load_tdrm
    d = distilled
    m = rl_stage(str(tiny_params_file), str(d), str(d / "tdrm.pt"), str(tmp_path / "rl.pt"),
                 str(tmp_path / "rl.json"), str(tmp_path / "plots"), resume_dir=str(tmp_path / "ck"))
    from tdrm.pipeline.common import details_path
    saved = json.loads(details_path(tmp_path / "rl.json").read_text())
    head = json.loads((tmp_path / "rl.json").read_text())
    assert (head["exact"], head["before_exact"], head["n"]) == (saved["exact_accuracy_after"],
                                                                 saved["exact_accuracy_before"], 100)
    assert head["p_value"] == float(f'{saved["paired_after_vs_before"]["p_value"]:.4g}')
    assert "accuracy_by_sampling_steps" not in head
    assert saved["train_steps"] == 6 and saved["n"] == 100 and saved["group_size"] == 16
    assert saved["sampling_steps"] == 3 and [r["sampling_steps"] for r in saved["accuracy_by_sampling_steps"]] == [1, 3]
    pair = saved["paired_after_vs_before"]
    assert set(pair) == {"only_first", "only_second", "p_value"}
    # after - before on the same 100 test puzzles is exactly the paired discordance
    assert pair["only_first"] - pair["only_second"] == round(100 * (saved["exact_accuracy_after"]
                                                                     - saved["exact_accuracy_before"]))
    assert 0.0 <= saved["final_reward_mean"] <= 1.0 + 0.1  # solved (1) + dense_weight x constraint share
    assert m["sacred_run_id"] is not None
    rows = (tmp_path / "plots" / "rl_train.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "reward_mean" in rows[0] and "skipped_groups" in rows[0] and len(rows) == 7
    from PIL import Image
    assert Image.open(tmp_path / "plots" / "rl.png").size == (900, 350)
    model, codec, sched, ck = load_tdrm(tmp_path / "rl.pt")  # `tdrm eval` reads it, at the rollout setting
    assert ck["config"]["distill"]["sample_steps"] == 3 and ck["config"]["rl"]["estimator"] == "awm"
    assert not (tmp_path / "ck" / "rl-resume.pt").exists()


@pytest.mark.parametrize("estimator", ["grpo", "elbo", "awm", "spg", "rft"])
def test_rollout_batch_keeps_what_each_estimator_trains_on(distilled, estimator, monkeypatch):
    """grpo / elbo / awm / spg: the groups with reward variance, with their advantages; rft: the samples
    that pass the validity check (reward >= 1), from any group, each with weight 1."""
    import tdrm.rl.train as T
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.dataset import load_split

    from ..conftest import tiny_params
    fixed = torch.tensor([[1.05, 1.05, 1.05, 1.05], [0.1, 1.1, 0.2, 1.0], [0.3, 0.3, 0.3, 0.3]])  # (P, G)
    monkeypatch.setattr(T, "reward", lambda *a, **k: fixed.reshape(-1))
    model, codec, sched, _ = load_tdrm(distilled / "tdrm.pt")
    cfg = tiny_params({"rl": {"group_size": 4, "estimator": estimator}}).rl
    train = load_split(distilled, "train")
    batch, stats = T.rollout_batch(model, codec, sched, train.puzzles[:3], train.shape, cfg,
                                   torch.Generator().manual_seed(0), "cpu")
    if estimator == "rft":
        assert batch.adv.tolist() == [1.0] * 6 and stats["skipped_groups"] == 1
        kept = [0, 1, 2, 3, 5, 7]
    else:
        assert stats["skipped_groups"] == 2 and batch.adv.shape == (4,)
        kept = [4, 5, 6, 7]
        adv = {"awm": awm_advantages, "spg": spg_advantages}.get(estimator, group_advantages)(fixed)
        assert torch.allclose(batch.adv, adv[1])
    assert stats["trained_samples"] == len(kept) and batch.puzzle.shape[0] == len(kept)
    tokens = torch.as_tensor(to_tokens(train.puzzles[:3])).repeat_interleave(4, 0)
    assert torch.equal(batch.puzzle, tokens[kept])


def test_filter_groups_refills_constant_groups_with_fresh_puzzles(distilled, tmp_path, monkeypatch):
    """Round 1: every group constant (nothing to learn from); refills draw fresh puzzles until
    rl.puzzles groups vary or rl.max_rollout_rounds is reached, and every extra rollout is counted."""
    import tdrm.rl.train as T

    from ..conftest import tiny_params
    calls = []

    def fake_reward(puzzles, boards, shape, dense):  # (S,) with G = 4 per puzzle
        calls.append(puzzles.shape[0] // 4)
        r = torch.full((puzzles.shape[0] // 4, 4), 1.05)
        if len(calls) % 3 == 2:  # the first refill: one varying group
            r[0, 0] = 0.1
        if len(calls) % 3 == 0:  # the second: all vary
            r[:, 0] = 0.1
        return r.reshape(-1)
    monkeypatch.setattr(T, "reward", fake_reward)
    p = tiny_params({"rl": {"group_size": 4, "puzzles": 4, "steps": 2, "eval_every": 0, "filter_groups": True,
                            "max_rollout_rounds": 3, "curriculum": "rating"}})
    res = T.train_rl(p, distilled / "tdrm.pt", distilled, tmp_path / "f.pt", progress=False)
    assert calls == [4, 4, 3] * 2  # 4 constant, then 1 of 4 varies, then the 3 missing
    row = res["history"][0]
    assert (row["rollout_puzzles"], row["refilled_groups"], row["rollout_rounds"]) == (11, 4, 3)
    assert (row["groups"], row["skipped_groups"], row["trained_samples"]) == (11, 7, 16)
    monkeypatch.setattr(T, "reward", lambda puzzles, *a: torch.full((puzzles.shape[0],), 1.05))
    res = T.train_rl(p, distilled / "tdrm.pt", distilled, tmp_path / "g.pt", progress=False)
    assert res["history"][0]["rollout_puzzles"] == 12 and res["history"][0]["rollout_rounds"] == 3  # gives up


def test_rollouts_are_stochastic_only_inside_the_sde_window(distilled):
    import tdrm.rl.train as T
    from tdrm.checkpoint import load_tdrm
    from tdrm.data.dataset import load_split

    from ..conftest import tiny_params
    model, codec, sched, _ = load_tdrm(distilled / "tdrm.pt")
    train = load_split(distilled, "train")
    for window, noisy in [(None, [True, True, True, False]), ((1, 3), [False, True, True, False])]:
        cfg = tiny_params({"rl": {"group_size": 4, "sample_steps": 4, "sde_window": window}}).rl
        batch, _ = T.rollout_batch(model, codec, sched, train.puzzles[:6], train.shape, cfg,
                                   torch.Generator().manual_seed(0), "cpu")
        assert [st.sigma > 0 for st in batch.sample.path] == noisy


@pytest.mark.parametrize("estimator", ["grpo", "elbo", "awm", "spg"])  # rft's tiny model solves nothing: it would not move
def test_rl_resume_gives_identical_weights(distilled, tmp_path, estimator):
    from tdrm.rl.train import train_rl
    from tdrm import checkpoint

    from ..conftest import crash_at, tiny_params
    d = distilled
    p = tiny_params({"rl": {"eval_every": 0, "group_size": 4, "estimator": estimator}})
    train_rl(p, d / "tdrm.pt", d, tmp_path / "a.pt", resume_path=tmp_path / "ra.pt", progress=False, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_rl(p, d / "tdrm.pt", d, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", tracker=crash_at(5),
                 progress=False, log_every=1)
    assert checkpoint.load(tmp_path / "rb.pt")["step"] == 4
    train_rl(p, d / "tdrm.pt", d, tmp_path / "b.pt", resume_path=tmp_path / "rb.pt", progress=False, log_every=1)
    a, b = checkpoint.load(tmp_path / "a.pt"), checkpoint.load(tmp_path / "b.pt")
    assert any(not torch.equal(a["model"][k], checkpoint.load(d / "tdrm.pt")["ema"][k]) for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_rl_refuses_bad_settings(distilled, tmp_path):
    from tdrm.rl.train import train_rl

    from ..conftest import tiny_params
    for over, msg in [({"estimator": "ppo"}, "rl.estimator"), ({"group_size": 1}, "group_size"),
                      ({"eta": 0.0, "estimator": "grpo"}, "stochastic rollouts"),
                      ({"sde_window": [0, 9]}, "stochastic window"),
                      ({"awm_levels": 0}, "awm_levels"), ({"awm_max_level": 1.5}, "awm_max_level"),
                      ({"spg_beta": 0.0}, "spg_beta"), ({"spg_mix": -0.1}, "spg_mix"),
                      ({"renoise_order": "random"}, "rl.renoise_order must be"),
                      ({"renoise_order": "rollout"}, "not trained with one noise level per cell"),
                      ({"order_temperature": -0.1}, "rl.order_temperature must be"),
                      ({"order_temperature": 0.5, "estimator": "grpo"}, "carry no term for that draw"),
                      ({"order_temperature": 0.5, "estimator": "awm"}, "draws the cell order of per-cell")]:
        with pytest.raises(ValueError, match=msg):
            train_rl(tiny_params({"rl": over}), distilled / "tdrm.pt", distilled, tmp_path / "x.pt", progress=False)



@pytest.mark.parametrize("estimator", ["grpo", "awm"])
def test_rl_runs_on_a_latent_cond_model(distilled, tmp_path, estimator):
    """A latent_cond denoiser end to end through the rl loop (rollouts keep each call's hidden state
    through the kept-group subset and the refill concatenation; grpo recomputes its step log-probs
    from them, starting at ratio 1)."""
    from tdrm.rl.train import train_rl
    from tdrm.train.distill import train_distill
    from tdrm.checkpoint import load_teacher

    from ..conftest import tiny_params
    teacher, _ = load_teacher(distilled / "t.pt")
    train_distill(tiny_params({"distill": {"steps": 20, "eval_every": 0, "denoiser": {"latent_cond": True}}}),
                  distilled / "tr", teacher, tmp_path / "latent.pt", progress=False)
    p = tiny_params({"rl": {"estimator": estimator, "steps": 2, "filter_groups": True, "eval_every": 0}})
    res = train_rl(p, tmp_path / "latent.pt", distilled, tmp_path / "rl.pt", progress=False)
    h = res["history"]
    assert len(h) == 2 and all(row["trained_samples"] > 0 for row in h)
    if estimator == "grpo":
        assert all(row["ratio_first_epoch"] == pytest.approx(1.0, abs=1e-5) for row in h)
