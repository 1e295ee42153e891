"""Sampling whole trajectories from a trajectory denoiser: the sampler table, the
self-conditioning closure the samplers call, and `generate` (puzzles in, standardised
trajectories or the sampler's whole path out)."""
from __future__ import annotations

import torch

from .samplers import draw_normal, revise_cells, sample_cells, sample_ddim, sample_ddpm, sample_rows

SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm}


class SelfCondModel:
    """Sampler-facing closure x0_hat = model(x_t, t, puzzle, previous x0_hat), and with the
    denoiser's `latent_cond` the previous call's hidden state as well."""

    def __init__(self, model, puzzle: torch.Tensor, record: bool = False):
        self.model, self.puzzle, self.prev, self.hidden = model, puzzle, None, None
        self.hiddens = [] if record else None  # every call's hidden state (latent_cond, with return_path)

    def __call__(self, x, t, cond=None):
        prev = self.prev if self.model.cfg.self_cond else None
        if getattr(self.model.cfg, "latent_cond", False):
            out, self.hidden = self.model(x, t, self.puzzle, prev, self.hidden, return_hidden=True)
            if self.hiddens is not None:
                self.hiddens.append(self.hidden)
        else:
            out = self.model(x, t, self.puzzle, prev)
        self.prev = out
        return out


@torch.no_grad()
def generate(model, puzzle_tokens: torch.Tensor, schedule, *, sampler: str, steps: int, eta: float,
             generator, return_path: bool = False, sigma_floor: float = 0.0,
             window: tuple[int, int] | None = None, confidence=None, revise: tuple[int, float, int] | None = None,
             order_temperature: float = 0.0):
    """Sample standardised trajectories (B, K, L, C) for puzzles (B, N); with `return_path`, the
    sampler's whole `Sample` (every step's x_t, x0_hat, mean, sigma, x_prev, log-prob, and with a
    latent_cond denoiser the call's hidden state, which the next call read). `window`:
    DDIM's stochastic steps (see `sample_ddim`); None = all. `generator`: a torch.Generator, or a
    `samplers.RowSlice` (a data-parallel rank's rows of a batch drawn whole). `confidence`:
    x0_hat (B, K, L, C) -> (B, L), which cells a per-cell model (`cell_window`) denoises first
    (`Codec.cell_confidence`); other models ignore it. `revise` (rounds, fraction, steps): after a
    per-cell chain, that many corrector rounds (`revise_cells`), each re-noising the `fraction`
    least confident cells and denoising them again in `steps` calls (the path goes on through them).
    `order_temperature` > 0: a per-cell model's cell order is drawn around the confidence order
    (`sample_cells`; RL's exploration), refused for other models."""
    b = puzzle_tokens.shape[0]
    x_T = draw_normal((b, model.K, model.L, model.C), generator).to(puzzle_tokens.device)  # a RowSlice: its rows
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    if sampler == "ddpm" and eta != 1.0:
        raise ValueError(f"ddpm samples at eta 1 (the posterior variance), got eta={eta}; use ddim for other values")
    cell_window = getattr(model, "cell_window", None)
    if window is not None and (sampler != "ddim" or getattr(model, "row_lag", None) is not None
                               or cell_window is not None):
        raise ValueError("a stochastic window is a DDIM option (shared noise level); this model or sampler has none")
    if order_temperature and cell_window is None:
        raise ValueError("a cell-order temperature is an option of per-cell chains (distill.row_noise: cells); "
                         "this model has none")
    if revise and cell_window is None:
        raise ValueError("revise is a corrector of per-cell chains (distill.row_noise: cells); this model has none")
    closure = SelfCondModel(model, puzzle_tokens, record=return_path)
    if cell_window is not None:  # trained with one noise level per cell: most confident cells first
        if confidence is None:
            raise ValueError("this denoiser was trained with one noise level per cell (distill.row_noise: cells): "
                             "sampling it needs a confidence function (codec.cell_confidence)")
        out = sample_cells(closure, x_T, schedule, generator=generator, steps=steps, window=cell_window,
                           confidence=confidence, eta=eta, return_path=return_path, sigma_floor=sigma_floor,
                           order_temperature=order_temperature)
        for _ in range(revise[0] if revise else 0):
            more = revise_cells(closure, out.x0, schedule, generator=generator, steps=revise[2], window=cell_window,
                                confidence=confidence, fraction=revise[1], prefix=getattr(model, "P", 0), eta=eta,
                                return_path=return_path, sigma_floor=sigma_floor)
            out.x0 = more.x0
            out.path.extend(more.path)
    elif getattr(model, "row_lag", None) is not None:  # trained with one noise level per row: rolling schedule
        out = sample_rows(closure, x_T, schedule, generator=generator, steps=steps,
                          lag=model.row_lag, eta=eta, return_path=return_path, sigma_floor=sigma_floor)
    else:
        extra = {} if window is None else {"window": tuple(window)}
        out = SAMPLERS[sampler](closure, x_T, schedule, generator=generator, steps=steps,
                                eta=eta, return_path=return_path, sigma_floor=sigma_floor, **extra)
    if not return_path:
        return out.x0
    if closure.hiddens and len(closure.hiddens) == len(out.path):  # (no calls on a rank without rows)
        for st, h in zip(out.path, closure.hiddens):
            st.hidden = h
    return out
