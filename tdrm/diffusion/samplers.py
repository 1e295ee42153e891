"""Samplers for an x0-predicting denoiser; every sampler shares one signature:

    sample_x(model, x_T, schedule, *, generator, steps=None, cond=None, eta=..., return_path=False)

`model(x_t, t, cond) -> x0_hat` with t (B,) integer steps. With `return_path` the result carries,
for every reverse step, x_t, t, the Gaussian mean, sigma and the exact log-probability of the
drawn x_{t-1} (None where sigma = 0: that step is deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .logprob import gaussian_log_prob, masked_gaussian_log_prob
from .schedules import Schedule, broadcast_levels, cell_levels, cell_starts, cells_started, row_levels


@dataclass
class Step:
    t: int
    t_prev: int
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    mean: torch.Tensor
    sigma: float | torch.Tensor  # per-row samplers: (K,) per row
    x_prev: torch.Tensor
    log_prob: torch.Tensor | None  # (B,) or None when deterministic
    hidden: torch.Tensor | None = None  # (B, K+1, L, D): a latent_cond denoiser's hidden state of this call


@dataclass
class Sample:
    x0: torch.Tensor
    path: list[Step] = field(default_factory=list)
    ranks: torch.Tensor | None = None  # (B, L) long: a per-cell chain's order (`sample_cells`), else None


def timesteps(schedule: Schedule, steps: int | None) -> list[int]:
    """Descending steps T = t_0 > ... > t_{S-1} >= 1 (DDIM's subsequence): t_i = 1 + (T - 1)
    (1 - i / (S - 1))^p with p = `schedule.spacing`; p = 1 spaces them evenly, p < 1 spends more of
    the calls at the noisy end, where the board is decided (p = 0.5: t = 200, 195, 189, ... for
    T = 200, S = 20, against 200, 190, 179, ...). Steps that round to the same level are merged."""
    s = schedule.T if steps is None else steps
    if not 1 <= s <= schedule.T:
        raise ValueError(f"sampling steps must be in 1..{schedule.T}, got {s}")
    p = schedule.spacing
    if p == 1.0 or s == 1:
        ts = torch.linspace(schedule.T, 1, s).round().long().tolist()
    else:
        u = torch.linspace(0, 1, s, dtype=torch.float64)  # 0 = the first (noisiest) call
        ts = (1 + (schedule.T - 1) * (1 - u) ** p).round().long().tolist()
    return list(dict.fromkeys(ts))


def ddim_step_params(schedule: Schedule, t: int, t_prev: int, eta: float) -> tuple[float, float, float]:
    """(c_x0, c_eps, sigma) of DDIM's reverse step (Song et al. 2021, eq. 12):
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab_t)) sqrt(1 - ab_t/ab_prev). eta = 1 with consecutive
    steps is DDPM's posterior (Ho et al. 2020, eq. 7)."""
    ab_t = float(schedule.alpha_bar[t])
    ab_p = float(schedule.alpha_bar[t_prev])
    sigma = eta * ((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p)) ** 0.5
    c_eps = max(1 - ab_p - sigma ** 2, 0.0) ** 0.5
    return ab_p ** 0.5, c_eps, sigma


def step_mean(schedule: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int, t_prev: int, eta: float,
              sigma_floor: float = 0.0) -> tuple[torch.Tensor, float]:
    """Mean and sigma of the Gaussian reverse step x_t -> x_{t_prev} given the model's x0_hat;
    sigma is raised to `sigma_floor` on every step but the last (t_prev = 0, deterministic)."""
    ab_t = float(schedule.alpha_bar[t])
    eps_hat = (x_t - ab_t ** 0.5 * x0_hat) / (1 - ab_t) ** 0.5
    c_x0, c_eps, sigma = ddim_step_params(schedule, t, t_prev, eta)
    if t_prev > 0:
        sigma = max(sigma, sigma_floor)
    return c_x0 * x0_hat + c_eps * eps_hat, sigma


@dataclass(frozen=True)
class RowSlice:
    """A generator seen by one rank of a data-parallel job: every draw is made for the whole batch
    of `total` rows (so the generator advances as in one process) and the rows `rows` are kept:
    rank r's samples get exactly the noise they get in a one-process run. `rows` may also be an
    index tensor (best-of-N's later samples of the puzzles still without a valid board)."""

    generator: torch.Generator
    total: int
    rows: slice | torch.Tensor


def draw_normal(shape: tuple[int, ...], generator: torch.Generator | RowSlice) -> torch.Tensor:
    """N(0, I) of `shape` (float32, CPU) from `generator`; a `RowSlice` draws its whole batch and
    returns its rows (shape[0] of them)."""
    if isinstance(generator, RowSlice):
        full = torch.randn((generator.total, *shape[1:]), generator=generator.generator, dtype=torch.float32)
        part = full[generator.rows]
        if part.shape[0] != shape[0]:
            raise ValueError(f"a RowSlice of rows {generator.rows} of {generator.total} cannot give {shape[0]} rows")
        return part
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def draw_gumbel(shape: tuple[int, ...], generator: torch.Generator | RowSlice) -> torch.Tensor:
    """Standard Gumbel noise of `shape` (float32, CPU): g = -log(-log Phi(z)) of `draw_normal`'s
    z, so a `RowSlice` gets its rows of the whole batch's draw as for the Gaussian noise."""
    z = draw_normal(shape, generator).double()
    return (-torch.log(-torch.special.log_ndtr(z))).float()


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, drawn on the CPU with `generator` (runs repeat on any device)."""
    return draw_normal(tuple(x.shape), generator).to(x.device, x.dtype)


def _chain(model, x_T, rounds, move, *, cond, return_path: bool) -> Sample:
    """The reverse chain every sampler shares: for each round (t, t_prev, the model's t), one
    model call and `move(x, x0_hat, t, t_prev) -> (mean, sigma, x_prev, log_prob)`."""
    x = x_T
    out = Sample(x_T)
    for t, t_prev, t_model in rounds:
        # no rows (a data-parallel rank's empty share of a short batch): no call, the noise is still drawn
        x0_hat = model(x, t_model, cond) if x.shape[0] else torch.zeros_like(x)
        mean, sigma, x_prev, lp = move(x, x0_hat, t, t_prev)
        if return_path:
            out.path.append(Step(t, t_prev, x, x0_hat, mean, sigma, x_prev, lp))
        x = x_prev
    out.x0 = x
    return out


def check_window(window, steps: int) -> None:
    """A stochastic window (start, end) of reverse-step indices must satisfy 0 <= start < end <= steps."""
    if window is not None and not (len(window) == 2 and 0 <= window[0] < window[1] <= steps):
        raise ValueError(f"the stochastic window must be (start, end) with 0 <= start < end <= {steps} "
                         f"(the sampling steps), got {tuple(window)}")


def _sample(model, x_T, schedule, *, generator, steps, cond, eta, return_path, sigma_floor=0.0, window=None):
    ts = timesteps(schedule, steps)
    check_window(window, len(ts))
    b = x_T.shape[0]
    rounds = [(t, ts[i + 1] if i + 1 < len(ts) else 0, torch.full((b,), t, dtype=torch.long, device=x_T.device))
              for i, t in enumerate(ts)]
    inside = {t for i, t in enumerate(ts) if window is None or window[0] <= i < window[1]}

    def move(x, x0_hat, t, t_prev):
        noisy = t in inside  # outside the window the step is DDIM's deterministic one (eta 0, no floor)
        mean, sigma = step_mean(schedule, x, x0_hat, t, t_prev, eta if noisy else 0.0, sigma_floor if noisy else 0.0)
        if sigma <= 0:
            return mean, sigma, mean, None
        x_prev = mean + sigma * _noise(x, generator)
        return mean, sigma, x_prev, gaussian_log_prob(x_prev, mean, sigma) if return_path else None

    return _chain(model, x_T, rounds, move, cond=cond, return_path=return_path)


def sample_ddpm(model, x_T, schedule: Schedule, *, generator: torch.Generator, steps: int | None = None,
                cond=None, eta: float = 1.0, return_path: bool = False, sigma_floor: float = 0.0) -> Sample:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance; with fewer
    `steps` than T it strides over the schedule (the DDIM generalisation at eta = 1). It has no
    other eta: any other value is refused rather than ignored."""
    if eta != 1.0:
        raise ValueError(f"ddpm samples at eta 1 (the posterior variance), got eta={eta}; use ddim for other values")
    return _sample(model, x_T, schedule, generator=generator, steps=steps, cond=cond, eta=1.0,
                   return_path=return_path, sigma_floor=sigma_floor)


def sample_ddim(model, x_T, schedule: Schedule, *, generator: torch.Generator, steps: int | None = None,
                cond=None, eta: float = 0.0, return_path: bool = False, sigma_floor: float = 0.0,
                window: tuple[int, int] | None = None) -> Sample:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta > 0 stochastic. `window`
    (start, end): only reverse steps start..end-1 (0 = the noisiest) are stochastic, the others
    deterministic (Flow-GRPO's SDE window); None = every step."""
    return _sample(model, x_T, schedule, generator=generator, steps=steps, cond=cond, eta=eta,
                   return_path=return_path, sigma_floor=sigma_floor, window=window)


def row_step(schedule: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
             eta: float, sigma_floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM's reverse step taken row by row: x_t, x0_hat (B, K, L, C), levels t, t_prev (K,) or
    (B, K), or per cell (B, 1, L) -> (mean (B, K, L, C), sigma of the levels' shape). A row (cell)
    whose level does not change is left as it is (mean = x_t, sigma = 0); one that reaches level 0
    gets sigma 0 (its clean estimate)."""
    ab = schedule.alpha_bar.to(x_t.device)
    ab_t, ab_p = ab[t], ab[t_prev]  # float64, shape of t
    moves = t_prev < t
    sigma = eta * ((1 - ab_p) / (1 - ab_t).clamp_min(1e-12) * (1 - ab_t / ab_p)).clamp_min(0).sqrt()
    sigma = torch.where(moves & (t_prev > 0), sigma.clamp_min(sigma_floor), torch.zeros_like(sigma))
    c_eps = (1 - ab_p - sigma ** 2).clamp_min(0).sqrt()

    def bc(v):  # levels (K,), (B, K) or (B, 1, L) -> broadcastable over (B, K, L, C)
        return broadcast_levels(v.to(x_t.dtype), x_t)
    eps_hat = (x_t - bc(ab_t.sqrt()) * x0_hat) / bc((1 - ab_t).clamp_min(1e-12).sqrt())
    mean = bc(ab_p.sqrt()) * x0_hat + bc(c_eps) * eps_hat
    return torch.where(bc(moves) > 0, mean, x_t), sigma


def row_rounds(rows: int, steps: int, lag: float, T: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(levels, next levels) (rows,) of each sampling round of the rolling schedule: `steps` rounds
    from progress 0 to 1; rounds in which no row moves are dropped (they cost no call)."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    lv = row_levels(torch.linspace(0, 1, steps + 1, dtype=torch.float64), rows, lag, T)  # (S+1, K)
    return [(lv[m], lv[m + 1]) for m in range(steps) if bool((lv[m + 1] < lv[m]).any())]


def sample_rows(model, x_T, schedule: Schedule, *, generator: torch.Generator, steps: int, lag: float,
                cond=None, eta: float = 0.0, return_path: bool = False, sigma_floor: float = 0.0) -> Sample:
    """Per-row sampling for a model trained with one noise level per trajectory row (Diffusion
    Forcing, arXiv 2407.01392): `model(x_t, t (B, K), cond)`; each round moves every row from its
    level to the next one of the rolling schedule (`row_levels`), earlier rows becoming clean first.
    Each round is Gaussian per row; its exact log-probability is the sum over the rows that moved
    with sigma > 0 (None when none did)."""
    b, k = x_T.shape[:2]
    rounds = [(t.to(x_T.device), tn.to(x_T.device), t.to(x_T.device).expand(b, k))
              for t, tn in row_rounds(k, steps, lag, schedule.T)]

    def move(x, x0_hat, t, t_prev):
        mean, sigma = row_step(schedule, x, x0_hat, t, t_prev, eta, sigma_floor)
        noisy = sigma > 0
        if not bool(noisy.any()):
            return mean, sigma, mean, None
        x_prev = mean + sigma.to(x.dtype).view(1, -1, 1, 1) * _noise(x, generator)
        lp = None
        if return_path:
            lp = sum(gaussian_log_prob(x_prev[:, r], mean[:, r], float(sigma[r])) for r in range(k) if bool(noisy[r]))
        return mean, sigma, x_prev, lp

    return _chain(model, x_T, rounds, move, cond=cond, return_path=return_path)


def top_margin(logits: torch.Tensor) -> torch.Tensor:
    """Confidence of decoded logits (..., V): the top-1 minus top-2 probability (the margin order of
    Kim et al. 2025, arXiv 2502.06768, section 4), (...)."""
    top = logits.float().softmax(-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _round_draws(schedule: Schedule, p: float, p_next: float, cells: int, window: float, eta: float,
                 sigma_floor: float, kept: int = 0) -> bool:
    """Whether the per-cell round from progress p to p_next draws noise: every sample places the
    same number of cells at the same levels (only which cells differs; `kept` clean cells of a
    continuation are ranks 0..kept-1), so the answer depends on the schedule alone and a
    data-parallel rank draws (for the whole batch) even when it has no rows."""
    placed, need = max(cells_started(p, cells, window), kept), max(cells_started(p_next, cells, window), kept)
    r = torch.arange(cells)[None]

    def levels(q, n):
        lv = cell_levels(torch.tensor([q], dtype=torch.float64), torch.where(r < n, r, -1), window, schedule.T)
        return lv.masked_fill(r[:, None] < kept, 0)
    t, tn = levels(p, placed), levels(p_next, need)
    z = torch.zeros(1, 1, cells, 1)
    return bool((row_step(schedule, z, z, t, tn, eta, sigma_floor)[1] > 0).any())


def sample_cells(model, x_T, schedule: Schedule, *, generator: torch.Generator, steps: int, window: float,
                 confidence, cond=None, eta: float = 0.0, return_path: bool = False,
                 sigma_floor: float = 0.0, keep: torch.Tensor | None = None,
                 order_temperature: float = 0.0) -> Sample:
    """Per-cell sampling for a model trained with one noise level per cell (`row_noise: cells`):
    `steps` rounds from progress 0 to 1 of the cell-order schedule (`cell_levels`), where the order
    is chosen as the chain goes (plan for the best, Kim et al. 2025): whenever the schedule starts
    new cells, the not yet started ones whose current estimate is most confident are taken,
    `confidence(x0_hat) -> (B, L)` (higher first). `model(x_t, t (B, 1, L), cond)`. The order is a
    function of the chain's state, so each round is Gaussian given the state; its exact
    log-probability sums over the cells that moved with sigma > 0 (None when none did). The
    returned `Sample.ranks` (B, L) is the order the chain chose: every recorded step's levels are
    `cell_levels` of it at that step's progress (a cell not yet placed sits at T either way).

    `order_temperature` tau > 0 draws the order instead (RL's exploration, `rl.order_temperature`):
    the cells started in a round are the top ones of confidence / tau + Gumbel noise, a draw
    without replacement with probabilities softmax(confidence / tau) over the cells not yet
    placed (Gumbel-top-k); tau = 0 (the default) is the deterministic confidence order.

    `keep` (B, L) bool, the same number n of cells in every row: a continuation (`revise_cells`)
    in which those cells of x_T are clean context from the start (level 0, never moved) and the
    others denoise from pure noise, the first of them starting at rank n of the schedule, over
    the `steps` rounds that remain from there (progress start(n) -> 1). A rank without rows cannot
    know n, so a continuation runs in one process."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    if not order_temperature >= 0:
        raise ValueError(f"the cell-order temperature must be >= 0, got {order_temperature}")
    b, _, cells = x_T.shape[:3]
    dev = x_T.device
    ranks = torch.full((b, cells), -1, dtype=torch.long, device=dev)  # order of start, -1 = not yet placed
    placed, p0 = 0, 0.0
    if keep is not None:
        n = keep.sum(-1)
        if keep.shape != (b, cells) or bool((n != n[:1]).any()) or (b and not 0 < int(n[0]) < cells):
            raise ValueError(f"keep must be (B, L) = ({b}, {cells}) with the same number of kept cells in every "
                             f"row, between 1 and {cells - 1}")
        placed = int(n[0]) if b else 0
        ranks[keep] = torch.arange(placed, device=dev).repeat(b)  # kept cells: ranks 0..n-1 (all clean)
        p0 = float(cell_starts(cells, window)[placed]) if b else 0.0
    x, out = x_T, Sample(x_T)

    def levels(p):  # (B, 1, L) at progress p, kept cells clean
        lv = cell_levels(torch.full((b,), p, dtype=torch.float64), ranks, window, schedule.T)
        return lv if keep is None else lv.masked_fill(keep[:, None], 0)
    t = levels(p0)  # (B, 1, L): all pure noise (but the kept cells)
    kept, p = placed, p0
    for m in range(steps):
        p_next = p0 + (1 - p0) * (m + 1) / steps
        x0_hat = model(x, t, cond) if b else torch.zeros_like(x)
        need = cells_started(p_next, cells, window)
        if need > placed:
            # drawn whatever the rows, so a RowSlice's generator advances alike on every rank
            gumbel = draw_gumbel((b, cells), generator).to(dev) if order_temperature > 0 else None  # (B, L)
            if b:
                conf = confidence(x0_hat).float().masked_fill(ranks >= 0, float("-inf"))  # (B, L)
                if gumbel is not None:
                    conf = conf / order_temperature + gumbel  # +-inf (prefix, placed cells) stay
                pick = conf.topk(need - placed, dim=-1).indices  # (B, n) most confident first
                ranks.scatter_(1, pick, torch.arange(placed, need, device=dev).expand(b, -1))
            placed = need
        t_next = levels(p_next)
        mean, sigma = row_step(schedule, x, x0_hat, t, t_next, eta, sigma_floor)  # sigma (B, 1, L)
        noisy = sigma > 0
        lp = None
        if _round_draws(schedule, p, p_next, cells, window, eta, sigma_floor, kept):  # every rank alike, any rows
            x_prev = mean + sigma.to(x.dtype)[..., None] * _noise(x, generator)
            if return_path:
                lp = masked_gaussian_log_prob(x_prev, mean, sigma[..., None], noisy[..., None])
        else:
            x_prev = mean
        if return_path:
            out.path.append(Step(t, t_next, x, x0_hat, mean, sigma, x_prev, lp))
        x, t, p = x_prev, t_next, p_next  # the next round starts at this round's levels (the ranks placed stay)
    out.x0, out.ranks = x, ranks  # every cell placed by p = 1: the order the chain chose
    return out


def revise_cells(model, x: torch.Tensor, schedule: Schedule, *, generator, steps: int, window: float, confidence,
                 fraction: float, prefix: int = 0, cond=None, eta: float = 0.0, return_path: bool = False,
                 sigma_floor: float = 0.0) -> Sample:
    """One corrector round of a per-cell chain (predictor-corrector sampling; ReMDM's remasking,
    Wang et al. 2025, arXiv 2503.00307, in this continuous form): the `fraction` of the cells
    (prefix positions excluded) least confident in the clean sample x (B, K, L, C) go back to pure
    noise and are denoised again over `steps` rounds, the others clean context, the most confident
    first (`sample_cells` with `keep`). A state of clean and not-yet-started cells is one the
    per-cell training draws."""
    b, _, cells = x.shape[:3]
    m = max(1, round(fraction * (cells - prefix)))
    if not 0.0 < fraction <= 1.0 or m >= cells:
        raise ValueError(f"the revised fraction must be in (0, 1] and leave a kept cell, got {fraction}")
    conf = confidence(x).float() if b else torch.zeros(b, cells, device=x.device)  # (B, L)
    conf[:, :prefix] = float("inf")  # prefix positions are never revised
    keep = torch.ones(b, cells, dtype=torch.bool, device=x.device)
    keep.scatter_(1, conf.topk(m, dim=-1, largest=False).indices, False)
    x_T = torch.where(keep[:, None, :, None], x, _noise(x, generator))
    return sample_cells(model, x_T, schedule, generator=generator, steps=steps, window=window,
                        confidence=confidence, cond=cond, eta=eta, return_path=return_path,
                        sigma_floor=sigma_floor, keep=keep)
