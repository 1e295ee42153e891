import math

import pytest
import torch

from tdrm.config import Denoiser as DenoiserConfig
from tdrm.diffusion.logprob import gaussian_log_prob
from tdrm.diffusion.samplers import ddim_step_params, sample_ddim, sample_ddpm, timesteps
from tdrm.diffusion.schedules import alpha_bar_sqrt, make_schedule, q_sample
from tdrm.models.denoiser import Denoiser


@pytest.mark.parametrize("name", ["sqrt", "cosine"])
def test_schedules_are_monotone_and_valid(name):
    s = make_schedule(name, 50)
    ab = s.alpha_bar
    assert ab[0] == 1 and (ab[1:] < 1).all() and (ab > 0).all() and (ab[1:] <= ab[:-1]).all()
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("linearish", 10)


@pytest.mark.parametrize("name", ["sqrt", "cosine"])
def test_schedule_shift_divides_snr(name):
    plain, shifted = make_schedule(name, 40), make_schedule(name, 40, shift=8.0)
    snr = lambda ab: ab[1:-1] / (1 - ab[1:-1])  # noqa: E731 (interior: the ends are clamped)
    assert torch.allclose(snr(shifted.alpha_bar), snr(plain.alpha_bar) / 64, rtol=1e-6)
    assert shifted.alpha_bar[0] == 1 and (shifted.alpha_bar[1:] <= shifted.alpha_bar[:-1]).all()
    assert torch.equal(make_schedule(name, 40, shift=1.0).alpha_bar, plain.alpha_bar)
    with pytest.raises(ValueError, match="shift"):
        make_schedule(name, 10, shift=0.0)


def test_sqrt_schedule_formula():
    assert math.isclose(alpha_bar_sqrt(torch.tensor(0.25)).item(), 1 - math.sqrt(0.25 + 1e-4), rel_tol=1e-6)


def test_q_sample_moments():
    s = make_schedule("cosine", 10)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 4), 2.0)
    t = torch.full((20000,), 5)
    xt = q_sample(x0, t, s, torch.randn(x0.shape, generator=g))
    ab = float(s.alpha_bar[5])
    assert abs(xt.mean().item() - 2 * math.sqrt(ab)) < 0.02 and abs(xt.var().item() - (1 - ab)) < 0.02


def test_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(1)
    x, mu = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    ref = torch.distributions.Normal(mu.double(), 0.7).log_prob(x.double()).sum((1, 2))
    assert torch.allclose(gaussian_log_prob(x, mu, 0.7), ref)
    assert torch.allclose(gaussian_log_prob(x, mu, 0.7, reduce="mean"), ref / 10)
    sig = torch.tensor([0.5, 1.0, 2.0])
    ref2 = torch.distributions.Normal(mu.double(), sig.double().view(3, 1, 1)).log_prob(x.double()).sum((1, 2))
    assert torch.allclose(gaussian_log_prob(x, mu, sig), ref2)


class Oracle(torch.nn.Module):
    """Predicts a fixed x0 whatever the input (a perfect denoiser of a delta distribution)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, cond):
        return self.x0.expand_as(x)


def test_ddim_eta0_is_deterministic_and_exact_with_an_oracle():
    s = make_schedule("sqrt", 40)
    x0 = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    xT = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    a = sample_ddim(Oracle(x0), xT, s, generator=torch.Generator().manual_seed(2), steps=8)
    b = sample_ddim(Oracle(x0), xT, s, generator=torch.Generator().manual_seed(3), steps=8)
    assert torch.equal(a.x0, b.x0) and torch.allclose(a.x0, x0.expand_as(a.x0), atol=1e-5)


def test_stochastic_paths_carry_exact_step_log_probs():
    s = make_schedule("cosine", 20)
    model = Oracle(torch.zeros(1, 6))
    xT = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    out = sample_ddpm(model, xT, s, generator=torch.Generator().manual_seed(5), return_path=True)
    assert [st.t for st in out.path] == list(range(20, 0, -1))
    for st in out.path[:-1]:
        ref = torch.distributions.Normal(st.mean.double(), st.sigma).log_prob(st.x_prev.double()).sum(-1)
        assert torch.allclose(st.log_prob, ref)
        # DDPM's sigma is the posterior std: beta_tilde = (1 - ab_prev)/(1 - ab_t) beta_t
        ab_t, ab_p = float(s.alpha_bar[st.t]), float(s.alpha_bar[st.t_prev])
        beta = 1 - ab_t / ab_p
        assert math.isclose(st.sigma ** 2, (1 - ab_p) / (1 - ab_t) * beta, rel_tol=1e-9)
    assert out.path[-1].log_prob is None and out.path[-1].sigma == 0  # last step to t=0 is the mean
    again = sample_ddpm(model, xT, s, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.x0, out.x0)


def test_ddim_with_eta_and_strided_steps():
    s = make_schedule("sqrt", 100)
    ts = timesteps(s, 10)
    assert ts[0] == 100 and ts[-1] == 1 and len(ts) == 10
    c_x0, c_eps, sigma = ddim_step_params(s, 50, 40, eta=0.5)
    full = ddim_step_params(s, 50, 40, eta=1.0)[2]
    assert math.isclose(sigma, 0.5 * full) and c_eps ** 2 + sigma ** 2 <= 1 - float(s.alpha_bar[40]) + 1e-12
    out = sample_ddim(Oracle(torch.zeros(1, 3)), torch.randn(2, 3), s, generator=torch.Generator().manual_seed(0),
                      steps=10, eta=0.5, return_path=True)
    assert all(st.log_prob is not None for st in out.path[:-1])
    with pytest.raises(ValueError, match="sampling steps"):
        timesteps(s, 0)


def test_time_spacing_spends_the_calls_at_the_noisy_end_and_stays_exact_with_an_oracle():
    """spacing 1 is the even DDIM subsequence (the old one, exactly); spacing 0.5 keeps T first and 1
    last, descending, with smaller gaps at the noisy end; with an oracle x0 the chain still lands
    exactly on it; spacing <= 0 is refused."""
    even, half = make_schedule("cosine", 200), make_schedule("cosine", 200, spacing=0.5)
    assert even.spacing == 1.0 and timesteps(even, 20) == torch.linspace(200, 1, 20).round().long().tolist()
    ts = timesteps(half, 20)
    assert ts[:3] == [200, 195, 189] and ts[-1] == 1 and len(ts) == 20
    assert all(a > b for a, b in zip(ts, ts[1:]))
    gaps, even_gaps = [a - b for a, b in zip(ts, ts[1:])], [a - b for a, b in zip(timesteps(even, 20), timesteps(even, 20)[1:])]
    assert gaps[0] < even_gaps[0] and gaps[-1] > even_gaps[-1]
    assert timesteps(make_schedule("cosine", 200, spacing=0.5), 4) == [200, 163, 116, 1]
    assert timesteps(half, 1) == [200]
    x0 = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(Oracle(x0), torch.randn(2, 3, 4), half, generator=torch.Generator().manual_seed(1), steps=7,
                      return_path=True)
    assert [st.t for st in out.path] == timesteps(half, 7)
    assert torch.allclose(out.x0, x0.expand_as(out.x0), atol=1e-5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="time spacing must be > 0"):
            make_schedule("cosine", 200, spacing=bad)


def test_stochastic_window_makes_only_its_steps_random():
    """Flow-GRPO's SDE window: steps start..end-1 are DDIM at eta with exact log-probs, the others
    DDIM's deterministic step (sigma 0, no log-prob); the window over every step is the plain sampler."""
    s = make_schedule("cosine", 50)
    model = Oracle(torch.zeros(1, 3))
    xT = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    run = lambda **k: sample_ddim(model, xT, s, generator=torch.Generator().manual_seed(1), steps=6, eta=1.0,  # noqa: E731
                                  return_path=True, **k)
    w = run(window=(1, 3))
    assert [st.sigma > 0 for st in w.path] == [False, True, True, False, False, False]
    assert [st.log_prob is not None for st in w.path] == [False, True, True, False, False, False]
    for st in w.path:
        if st.sigma > 0:
            ref = torch.distributions.Normal(st.mean.double(), st.sigma).log_prob(st.x_prev.double()).sum(-1)
            assert torch.allclose(st.log_prob, ref)
        else:
            assert torch.equal(st.x_prev, st.mean)
    plain, full = run(), run(window=(0, 6))
    assert all(a.sigma == b.sigma and torch.equal(a.x_prev, b.x_prev) for a, b in zip(plain.path, full.path))
    assert not torch.equal(plain.path[0].x_prev, w.path[0].x_prev)  # step 0 is deterministic in the window run
    for bad in [(2, 2), (0, 7), (-1, 2)]:
        with pytest.raises(ValueError, match="stochastic window"):
            run(window=bad)


@pytest.mark.parametrize("attention,self_cond", [("full", False), ("factorised", True)])
def test_denoiser_shapes_and_adaln_zero_start(attention, self_cond):
    cfg = DenoiserConfig(hidden=16, layers=2, heads=2, attention=attention, self_cond=self_cond)
    m = Denoiser(cfg, steps=3, cells=16, channels=8, vocab=6)
    x = torch.randn(2, 3, 16, 8)
    out = m(x, torch.tensor([1, 7]), torch.randint(0, 6, (2, 16)))
    assert out.shape == (2, 3, 16, 8) and torch.equal(out, torch.zeros_like(out))  # zero-initialised output
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 8\)"):
        m(torch.randn(2, 4, 16, 8), torch.tensor([1, 1]), torch.randint(0, 6, (2, 16)))


def _unzeroed(cfg: DenoiserConfig) -> Denoiser:
    """A denoiser (K 3, L 16, C 4) with its zero-initialised weights randomised, so that
    information flow is visible."""
    m = Denoiser(cfg, steps=3, cells=16, channels=4, vocab=6)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return m


def _response(m: Denoiser, step: int, cell: int) -> torch.Tensor:
    """(K, L) change of the output when input token (step, cell) is perturbed."""
    x = torch.randn(1, 3, 16, 4, generator=torch.Generator().manual_seed(0))
    puzzle, t = torch.randint(0, 6, (1, 16), generator=torch.Generator().manual_seed(1)), torch.tensor([3])
    x2 = x.clone()
    x2[0, step, cell] += 1.0
    return (m(x2, t, puzzle) - m(x, t, puzzle)).abs().sum(-1)[0]


def test_factorised_step_block_mixes_steps_not_cells():
    m = _unzeroed(DenoiserConfig(hidden=16, layers=1, heads=2, attention="factorised"))
    d = _response(m, 0, 5)
    assert d[1, 5] > 0 and d[2, 5] > 0  # other steps of the same cell see it
    assert d[1, 6] == 0 and d[2, 4] == 0  # other cells do not (one step-axis block)


def test_cell_mlp_mixer_mixes_cells_within_a_step_only():
    m = _unzeroed(DenoiserConfig(hidden=16, layers=2, heads=2, attention="factorised", cell_mixer="mlp"))
    with torch.no_grad():
        m.blocks[0].ada.weight.zero_()  # block 0 (steps axis) gated shut: only the cell MLP acts
        m.blocks[0].ada.bias.zero_()
    d = _response(m, 1, 5)
    assert d[1, 0] > 0 and d[1, 15] > 0  # every cell of the same step sees it
    assert d[0].sum() == 0 and d[2].sum() == 0  # other steps do not
    with pytest.raises(ValueError, match="cell_mixer"):
        Denoiser(DenoiserConfig(hidden=16, layers=2, heads=2, cell_mixer="conv"), 3, 16, 4, 6)


def test_denoiser_init_is_seeded_not_global_rng():
    cfg = DenoiserConfig(hidden=16, layers=2, heads=2)
    torch.manual_seed(0)
    a = Denoiser(cfg, 3, 16, 8, 6).state_dict()
    torch.manual_seed(1)
    b = Denoiser(cfg, 3, 16, 8, 6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_denoiser_prefix_positions_are_learned_conditioning():
    cfg = DenoiserConfig(hidden=16, layers=2, heads=2, cell_mixer="mlp")
    m = Denoiser(cfg, 3, 5, 4, 7, prefix=1)  # 1 prefix position + 4 cells
    x, t = torch.randn(2, 3, 5, 4), torch.tensor([1, 7])
    assert m(x, t, torch.randint(0, 7, (2, 4))).shape == (2, 3, 5, 4)
    with pytest.raises(ValueError, match=r"puzzle tokens \(2, 4\)"):
        m(x, t, torch.randint(0, 7, (2, 5)))
    with pytest.raises(ValueError, match="prefix positions"):
        Denoiser(cfg, 3, 5, 4, 7, prefix=5)


@pytest.mark.parametrize("cell_window", [None, 0.3])
def test_row_slice_gives_a_rank_the_rows_of_the_one_process_sample(cell_window):
    """A data-parallel rank's share of a batch (`RowSlice`) is sampled with exactly the noise its
    rows get when the whole batch is sampled at once, at the start and at every stochastic step;
    an empty share (a short last batch) draws the same and calls no model. Also for a per-cell
    model, whose order depends on each sample's own estimates."""
    from tdrm.diffusion.samplers import RowSlice, top_margin
    from tdrm.diffusion.sampling import generate
    from tdrm.dist import World, rows
    m = _unzeroed(DenoiserConfig(hidden=16, layers=2, heads=2, self_cond=True))
    m.cell_window = cell_window
    tokens = torch.randint(1, 5, (5, 16), generator=torch.Generator().manual_seed(0))
    sched = make_schedule("cosine", 50)
    kw = dict(sampler="ddim", steps=4, eta=0.7, confidence=lambda x0_hat: top_margin(x0_hat[:, -1, :, :5]))
    whole = generate(m, tokens, sched, generator=torch.Generator().manual_seed(3), **kw)
    parts = []
    for r in range(2):
        mine = rows(5, World(rank=r, size=2))
        parts.append(generate(m, tokens[mine], sched, generator=RowSlice(torch.Generator().manual_seed(3), 5, mine),
                              **kw))
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(3)
    empty = generate(m, tokens[:0], sched, generator=RowSlice(g, 5, slice(5, 5)), **kw)
    assert empty.shape == (0, *whole.shape[1:])
    assert torch.equal(g.get_state(), (lambda h: (generate(m, tokens, sched, generator=h, **kw), h)[1])(
        torch.Generator().manual_seed(3)).get_state())  # the generator advanced as for the whole batch
    with pytest.raises(ValueError, match="cannot give 2 rows"):
        generate(m, tokens[:2], sched, generator=RowSlice(torch.Generator(), 5, slice(0, 3)), **kw)
