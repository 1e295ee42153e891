"""The move denoiser (`distill.denoiser.arch: move`, issue 13 arm 2): a recursive denoiser whose
per-row computation is one TRM supervision step.

The modelled rows are the teacher's step-end states (y_k, z_k) (state yz, all L = P + N recorded
positions, no channel projection). The denoiser predicts every row k at once from its own
estimate of row k-1:

    src_{k-1} = x0_prev[k-1]                        (self-conditioning: the previous call's estimate)
              = c_in(t_{k-1}) x_t[k-1]              (first call: the posterior-mean scale of the noisy row)
    src_{-1}  = the core's initial state (y_init, z_init)
    m_k       = standardise(step(unstandardise(src_{k-1}), puzzle))   T cycles of n latent + 1 answer update
    x0_hat_k  = m_k + corr([x_t[k], m_k, time(t_k)])                    corr zero-initialised

`step` is a TRM core of the teacher's configuration (its f applied T (n + 1) times per row), so
one denoiser call does a teacher move on every row in parallel and a chain of calls is a
fixed-point (Jacobi) iteration over the trajectory, refined by the learned correction from the
noisy rows. `init: teacher` copies the teacher's weights into the core: the untrained chain then
reproduces the teacher's trajectory after K calls (a check of the wiring, not a result of
training; `init: random` is the arm that tests whether the diffusion objective learns the move).
The first T - 1 cycles run without grad, as in TRM's training.

Shapes: B batch, K rows, L positions (P prefix + N cells), C = 2 D channels, D teacher hidden, E time features.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import Denoiser as DenoiserConfig, Model
from .layers import timestep_embedding
from .trm import TRM

TIME_FEATURES = 32


class MoveDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, teacher_cfg: Model, steps: int, cells: int, channels: int, vocab: int,
                 prefix: int, mean: torch.Tensor, std: torch.Tensor, alpha_bar: torch.Tensor,
                 row_lag: float | None = None, teacher_state: dict | None = None):
        """`cells` = L (P + N recorded positions); `mean`, `std` (C,) the trajectory standardiser;
        `alpha_bar` (T + 1,) the noise schedule; `teacher_state` the teacher's weights for init teacher."""
        super().__init__()
        d = teacher_cfg.hidden
        if cfg.init not in ("random", "teacher"):
            raise ValueError(f"denoiser init must be random or teacher, got {cfg.init!r}")
        if cfg.hidden != d:
            raise ValueError(f"denoiser arch move runs the teacher's network: denoiser.hidden must equal the "
                             f"teacher's hidden {d}, got {cfg.hidden}")
        if not cfg.self_cond:
            raise ValueError("denoiser arch move moves each row from the previous call's estimate: it needs self_cond: true")
        if prefix != teacher_cfg.prefix:
            raise ValueError(f"denoiser arch move needs all {teacher_cfg.prefix} prefix position(s) of the teacher in "
                             f"the traces (traces.prefix: true), got {prefix}")
        if channels != 2 * d:
            raise ValueError(f"denoiser arch move models state yz without projection ({2 * d} channels), got {channels}")
        if cfg.init == "teacher" and teacher_state is None:
            raise ValueError("denoiser init teacher needs the teacher's weights")
        self.cfg, self.K, self.L, self.C, self.P, self.row_lag = cfg, steps, cells, channels, prefix, row_lag
        self.core = TRM(replace(teacher_cfg, init_seed=cfg.init_seed), cells - prefix, vocab)
        del self.core.lm_head, self.core.q_head  # the denoiser decodes through the frozen teacher's heads
        if cfg.init == "teacher":
            own = self.core.state_dict()
            self.core.load_state_dict({k: v for k, v in teacher_state.items() if k in own})
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        # E[x0 | x_t] = sqrt(alpha_bar) x_t for unit-variance Gaussian data: the first call's source rows
        self.register_buffer("c_in", alpha_bar.double().sqrt().float())
        self.corr_in = nn.Linear(2 * channels + TIME_FEATURES, d)
        self.corr_out = nn.Linear(d, channels)
        nn.init.zeros_(self.corr_out.weight)
        nn.init.zeros_(self.corr_out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, puzzle: torch.Tensor,
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, K, L, C), t (B,) or (B, K) steps, puzzle (B, N), x0_prev (B, K, L, C) or None -> x0_hat."""
        b, k = x_t.shape[:2]
        if x_t.shape[1:] != (self.K, self.L, self.C):
            raise ValueError(f"expected trajectories (B, {self.K}, {self.L}, {self.C}), got {tuple(x_t.shape)}")
        if puzzle.shape != (b, self.L - self.P):
            raise ValueError(f"expected puzzle tokens ({b}, {self.L - self.P}), got {tuple(puzzle.shape)}")
        tk = t[:, None].expand(b, k) if t.dim() == 1 else t  # (B, K)
        if tk.shape != (b, k):
            raise ValueError(f"expected steps ({b},) or ({b}, {k}), got {tuple(t.shape)}")
        src = x0_prev if x0_prev is not None else self.c_in[tk][:, :, None, None] * x_t  # (B, K, L, C)
        raw = src[:, :-1] * self.std + self.mean  # rows 0..K-2 in teacher space (B, K-1, L, 2D)
        y0, z0 = self.core.initial_state(b)  # (B, L, D) each
        d = self.core.cfg.hidden
        y = torch.cat([y0[:, None].to(raw.dtype), raw[..., :d]], dim=1)  # (B, K, L, D): the state before each row
        z = torch.cat([z0[:, None].to(raw.dtype), raw[..., d:]], dim=1)
        y, z = rearrange(y, "b k l d -> (b k) l d"), rearrange(z, "b k l d -> (b k) l d")
        x = self.core.input_embedding(puzzle).repeat_interleave(k, dim=0)  # (B K, L, D)
        with torch.no_grad():
            for _ in range(self.core.cfg.T - 1):
                y, z = self.core.cycle(y, z, x)
        y, z = self.core.cycle(y, z, x)
        m = (rearrange(torch.cat([y, z], dim=-1), "(b k) l c -> b k l c", b=b) - self.mean) / self.std
        temb = timestep_embedding(tk.reshape(-1), TIME_FEATURES).reshape(b, k, 1, TIME_FEATURES)
        feats = torch.cat([x_t, m, temb.expand(b, k, self.L, TIME_FEATURES).to(x_t.dtype)], dim=-1)
        return m + self.corr_out(F.silu(self.corr_in(feats)))  # (B, K, L, C)
