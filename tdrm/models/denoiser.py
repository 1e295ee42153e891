"""Trajectory denoiser: a transformer over the K x L tokens of a teacher trajectory.

Input x_t (B, K, L, C) is the noised standardised trajectory; the puzzle enters as a clean row of
L conditioning tokens in front of the K trajectory rows (DiffuSeq-style partial noising), so the
token grid is (K+1) x L. When the traces keep the teacher's P prefix positions (L = P + N cells),
those positions of the conditioning row are learned embeddings. Attention is either full over all (K+1) L tokens or factorised: blocks
alternate attention over steps (per cell) and over cells (per step); with `row_causal` the
attention over steps is causal, so row k reads the puzzle row and rows 1..k only (a row is
computed from the rows before it, as the teacher's step k from its step k-1; issue 13). Time enters by adaLN-Zero
(DiT, Peebles & Xie 2023): each block's shift/scale/gate come from the time embedding through a
zero-initialised linear, so every block starts as the identity. The output is x0_hat (B, K, L, C).

Latent self-conditioning (`latent_cond`, Recurrent Interface Networks, Jabri et al. 2022, arXiv
2212.11972): the call also reads the previous call's last hidden state (B, K+1, L, D) through a
LayerNorm and a zero-initialised linear added to its input tokens, so a sampling chain carries a
latent from call to call as TRM carries z from one supervision step to the next (None = zeros:
the first call of a chain). Zero-initialised, the model starts as the one without it.

Shapes: B batch, K steps, L positions (P prefix + N cells), C channels, D hidden, H heads, E head dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kernels.adaln import adaln
from kernels.attention import attention

from ..config import Denoiser as DenoiserConfig
from .layers import Linear, SwiGLU, timestep_embedding, trunc_normal_
from .move import MoveDenoiser


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, g=None):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, g)
        self.out = Linear(dim, dim, g)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x (N, S, D): attention over S for each of N sequences; `causal`: position s reads 0..s only
        (plain torch: the fused kernel takes key masks, and S is the few trajectory rows here)."""
        q, k, v = rearrange(self.qkv(x), "n s (three h e) -> three n h s e", three=3, h=self.heads)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True) if causal else attention(q, k, v)  # (N, H, S, E)
        return self.out(rearrange(o, "n h s e -> n s (h e)"))


class CellTime:
    """Time embeddings of a per-cell call: `cells` (B, L, D) for the trajectory rows (every row of a
    cell shares its level) and `clean` (D,) for the clean puzzle row. Modulations are computed once
    per cell and broadcast over the rows, never materialised per token."""

    def __init__(self, cells: torch.Tensor, clean: torch.Tensor):
        self.cells, self.clean = cells, clean

    def split(self, linear: nn.Module, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """linear(silu(temb)) cut into `parts` modulations, each a pair (puzzle row (1, 1, 1, D),
        trajectory rows (B, 1, L, D)) that broadcasts over (B, 1, L, D) and (B, K, L, D)."""
        clean = linear(F.silu(self.clean)).view(1, 1, 1, -1).chunk(parts, dim=-1)
        cells = linear(F.silu(self.cells))[:, None].chunk(parts, dim=-1)
        return list(zip(clean, cells))


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """modulate(layer_norm(h)) with broadcasting shift / scale: what `kernels.adaln` computes."""
    return F.layer_norm(h, (h.shape[-1],), eps=1e-5) * (1 + scale) + shift


class DenoiserBlock(nn.Module):
    """adaLN-Zero block; `axis` is `all`, `steps`, `cells` (attention) or `cells_mlp`: an MLP
    along the cell axis (MLP-Mixer / TRM's mlp_t token mixing, fixed cell-to-cell weights)."""

    def __init__(self, dim: int, heads: int, expansion: float, axis: str, cells: int, g=None,
                 causal: bool = False):
        super().__init__()
        self.axis, self.causal = axis, causal  # causal: an attention over steps that reads earlier rows only
        self.attn = SwiGLU(cells, expansion, 8, g) if axis == "cells_mlp" else SelfAttention(dim, heads, g)
        self.mlp = SwiGLU(dim, expansion, 8, g)
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """h (B, K1, L, D), temb (B, D) (one noise level per sample), (B, K1, D) (one per row) or a
        `CellTime` (one per cell)."""
        b, k1, l, d = h.shape
        if isinstance(temb, CellTime):
            return self._forward_cells(h, temb)
        if temb.dim() == 3:  # per-row modulation: each row is its own adaLN "sample" of L tokens
            s1, c1, g1, s2, c2, g2 = self.ada(F.silu(temb)).reshape(b * k1, 6 * d).chunk(6, dim=-1)  # (B K1, D)
            hf = h.reshape(b * k1, l, d)
        else:
            s1, c1, g1, s2, c2, g2 = self.ada(F.silu(temb)).chunk(6, dim=-1)  # each (B, D)
            hf = h.reshape(b, k1 * l, d)  # (B, N, D) tokens
        x = adaln(hf, s1, c1)[1].reshape(b, k1, l, d)  # modulate(layer_norm(h)), kernels.adaln
        a = self._mix(x)
        # h + g1 a and the next sublayer's modulated norm in one op
        hf, x = adaln(hf, s2, c2, a.reshape(hf.shape), g1)
        return (hf + g2[:, None] * self.mlp(x)).reshape(b, k1, l, d)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """The token mixer along the block's axis: x (B, K1, L, D) -> (B, K1, L, D)."""
        b, k1, l, d = x.shape
        if self.axis == "all":
            return self.attn(x.reshape(b, k1 * l, d)).reshape(b, k1, l, d)
        if self.axis == "cells_mlp":
            return rearrange(self.attn(rearrange(x, "b k l d -> b k d l")), "b k d l -> b k l d")
        if self.axis == "steps":
            return rearrange(self.attn(rearrange(x, "b k l d -> (b l) k d"), self.causal), "(b l) k d -> b k l d", b=b)
        return rearrange(self.attn(rearrange(x, "b k l d -> (b k) l d")), "(b k) l d -> b k l d", b=b)

    def _forward_cells(self, h: torch.Tensor, temb: CellTime) -> torch.Tensor:
        """The block with one modulation per cell: row 0 (the puzzle) takes the clean level's, rows
        1..K their cell's, broadcast (the same ops as `kernels.adaln`'s reference, per part)."""
        (s1, c1, g1, s2, c2, g2) = temb.split(self.ada, 6)  # pairs (puzzle row, trajectory rows)
        h0, hr = h[:, :1], h[:, 1:]
        x = torch.cat([_modulate(h0, s1[0], c1[0]), _modulate(hr, s1[1], c1[1])], dim=1)
        a = self._mix(x)
        h0, hr = h0 + g1[0] * a[:, :1], hr + g1[1] * a[:, 1:]
        x = torch.cat([_modulate(h0, s2[0], c2[0]), _modulate(hr, s2[1], c2[1])], dim=1)
        m = self.mlp(x)
        return torch.cat([h0 + g2[0] * m[:, :1], hr + g2[1] * m[:, 1:]], dim=1)


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, steps: int, cells: int, channels: int, vocab: int, prefix: int = 0,
                 row_lag: float | None = None, cell_window: float | None = None,
                 puzzle_table: torch.Tensor | None = None):
        """`row_lag`: None when trained with one noise level per sample; else the model takes one
        level per row and is sampled with the rolling schedule of that lag (`samplers.sample_rows`).
        `cell_window`: not None when trained with one level per cell (`samplers.sample_cells`).
        `puzzle_table` (I, D_teacher): a teacher's puzzle embeddings (ARC: one per task and
        augmentation), kept frozen; the puzzle input is then (B, N + 1), the last column each row's
        puzzle id, whose embedding (through a learned linear map) joins the clean puzzle row."""
        super().__init__()
        if row_lag is not None and cell_window is not None:
            raise ValueError("a denoiser takes one level per row (row_lag) or per cell (cell_window), not both")
        self.row_lag, self.cell_window = row_lag, cell_window
        if not 0 <= prefix < cells:
            raise ValueError(f"prefix positions must be in 0..{cells - 1}, got {prefix}")
        if cfg.attention not in ("full", "factorised"):
            raise ValueError(f"denoiser attention must be 'full' or 'factorised', got {cfg.attention!r}")
        if cfg.recur < 1:
            raise ValueError(f"denoiser recur must be >= 1, got {cfg.recur}")
        if cfg.cell_mixer not in ("attention", "mlp"):
            raise ValueError(f"denoiser cell_mixer must be 'attention' or 'mlp', got {cfg.cell_mixer!r}")
        if cfg.row_causal and cfg.attention != "factorised":
            raise ValueError("denoiser row_causal makes the attention over steps causal: it needs attention factorised")
        self.cfg, self.K, self.L, self.C, self.P = cfg, steps, cells, channels, prefix
        g = torch.Generator().manual_seed(cfg.init_seed)
        d = cfg.hidden
        self.inp = Linear(channels * (2 if cfg.self_cond else 1), d, g)
        self.puzzle = nn.Parameter(trunc_normal_(torch.empty(vocab, d), 1 / math.sqrt(d), g))
        self.prefix = nn.Parameter(trunc_normal_(torch.empty(prefix, d), 1 / math.sqrt(d), g)) if prefix else None
        self.step_pos = nn.Parameter(trunc_normal_(torch.empty(steps + 1, d), 0.02, g))
        self.cell_pos = nn.Parameter(trunc_normal_(torch.empty(cells, d), 0.02, g))
        self.time = nn.Sequential(Linear(d, d, g, bias=True), nn.SiLU(), Linear(d, d, g, bias=True))
        cell_axis = "cells_mlp" if cfg.cell_mixer == "mlp" else "cells"
        axes = ["all"] * cfg.layers if cfg.attention == "full" else \
            [("steps", cell_axis)[i % 2] for i in range(cfg.layers)]
        self.blocks = nn.ModuleList(DenoiserBlock(d, cfg.heads, cfg.expansion, a, cells, g,
                                                  causal=cfg.row_causal and a == "steps") for a in axes)
        self.final_ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, channels)
        for m in (self.final_ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.latent = None
        if cfg.latent_cond:  # made last, so every other weight's init is the model's without it
            self.latent = nn.Sequential(nn.LayerNorm(d), Linear(d, d, g))
            nn.init.zeros_(self.latent[1].weight)
        self.ids = None  # after every other weight, for the same reason
        if puzzle_table is not None:
            self.register_buffer("puzzle_table", puzzle_table.detach().clone().float())  # (I, D_teacher), frozen
            self.ids = Linear(puzzle_table.shape[1], d, g)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, puzzle: torch.Tensor,
                x0_prev: torch.Tensor | None = None, h_prev: torch.Tensor | None = None, *,
                return_hidden: bool = False):
        """x_t (B, K, L, C), t (B,) steps or (B, K) one step per row (the clean puzzle row at 0),
        puzzle tokens (B, N) (with a `puzzle_table`: (B, N + 1), the puzzle id last) -> x0_hat
        (B, K, L, C); with `return_hidden`, (x0_hat, h) with h the last hidden state
        (B, K+1, L, D), what `latent_cond` reads back as `h_prev` in the next call."""
        b = x_t.shape[0]
        if x_t.shape[1:] != (self.K, self.L, self.C):
            raise ValueError(f"expected trajectories (B, {self.K}, {self.L}, {self.C}), got {tuple(x_t.shape)}")
        n = self.L - self.P + (self.ids is not None)  # the tokens (and the puzzle id)
        if puzzle.shape != (b, n):
            last = " with the puzzle id last" if self.ids is not None else ""
            raise ValueError(f"expected puzzle tokens ({b}, {n}){last}, got {tuple(puzzle.shape)}")
        ids = None
        if self.ids is not None:
            puzzle, ids = puzzle[:, :-1], puzzle[:, -1]
            if bool(((ids < 0) | (ids >= self.puzzle_table.shape[0])).any()):
                raise ValueError(f"puzzle ids must be in 0..{self.puzzle_table.shape[0] - 1}")
        if self.cfg.self_cond:
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev], dim=-1)
        h = self.inp(x_t)  # (B, K, L, D)
        cond = F.embedding(puzzle, self.puzzle)  # (B, N, D)
        if self.prefix is not None:
            cond = torch.cat([self.prefix.expand(b, -1, -1), cond], dim=1)
        if ids is not None:  # the puzzle's embedding, at every position of the puzzle row
            cond = cond + self.ids(self.puzzle_table[ids])[:, None]
        cond = cond[:, None]  # (B, 1, L, D): the clean puzzle row, also added to every step
        h = torch.cat([cond, h + cond], dim=1) + self.step_pos[None, :, None] + self.cell_pos[None, None]
        d = self.cfg.hidden
        if self.latent is not None:  # (B, K1, L, D): the previous call's latent, zeros at a chain's start
            if h_prev is not None and h_prev.shape != h.shape:
                raise ValueError(f"expected a previous hidden state {tuple(h.shape)}, got {tuple(h_prev.shape)}")
            h = h + self.latent(torch.zeros_like(h) if h_prev is None else h_prev.to(h.dtype))
        elif h_prev is not None:
            raise ValueError("a previous hidden state was given to a denoiser without latent_cond")
        if t.dim() == 3:  # per-cell levels (B, 1, L), shared by the cell's rows; the puzzle row is clean
            if t.shape != (b, 1, self.L):
                raise ValueError(f"expected per-cell steps ({b}, 1, {self.L}), got {tuple(t.shape)}")
            temb = CellTime(self.time(timestep_embedding(t.reshape(-1), d)).reshape(b, self.L, d),
                            self.time(timestep_embedding(t.new_zeros(1), d))[0])
        elif t.dim() == 2:  # per-row levels (B, K); the puzzle row is clean
            if t.shape != (b, self.K):
                raise ValueError(f"expected per-row steps ({b}, {self.K}), got {tuple(t.shape)}")
            t1 = torch.cat([torch.zeros_like(t[:, :1]), t], dim=1)  # (B, K1)
            temb = self.time(timestep_embedding(t1.reshape(-1), d)).reshape(b, self.K + 1, d)  # (B, K1, D)
        else:
            temb = self.time(timestep_embedding(t, d))  # (B, D)
        for _ in range(self.cfg.recur):  # weight-tied recursion over the block stack
            for blk in self.blocks:
                h = blk(h, temb)
        hidden = h  # (B, K1, L, D)
        if isinstance(temb, CellTime):
            (_, shift), (_, scale) = temb.split(self.final_ada, 2)  # (B, 1, L, D) each
            h = _modulate(h[:, 1:], shift, scale)  # (B, K, L, D)
        elif temb.dim() == 3:
            shift, scale = self.final_ada(F.silu(temb[:, 1:])).reshape(b * self.K, 2 * d).chunk(2, dim=-1)
            h = adaln(h[:, 1:].reshape(b * self.K, self.L, d), shift, scale)[1]
        else:
            shift, scale = self.final_ada(F.silu(temb)).chunk(2, dim=-1)
            h = adaln(h[:, 1:].reshape(b, -1, d), shift, scale)[1]  # modulate(layer_norm(.)), kernels.adaln
        x0_hat = self.out(h).reshape(b, self.K, self.L, self.C)
        return (x0_hat, hidden) if return_hidden else x0_hat


def row_lag_of(cfg) -> float | None:
    """The denoiser's per-row sampling schedule: the rolling lag, or None (one shared level, or per cell)."""
    return None if cfg.row_noise in ("shared", "cells") else float(cfg.row_lag)


def set_sampling_lag(model: nn.Module, row_noise: str, lag: float) -> None:
    """Sample `model` on the rolling schedule of `lag` (0 = one shared level, 1 = row by row) instead
    of its training lag. Only a model trained with independent per-row levels (`row_noise:
    independent`, Diffusion Forcing: every combination of row levels seen in training) can; one
    trained on a rolling schedule has seen that schedule's combinations alone."""
    if row_noise != "independent":
        raise ValueError(f"only a denoiser trained with distill.row_noise independent samples at any row lag; "
                         f"this one was trained with row_noise {row_noise!r}")
    if not 0.0 <= lag <= 1.0:
        raise ValueError(f"the sampling row lag must be in [0, 1], got {lag}")
    model.row_lag = float(lag)


def cell_window_of(cfg) -> float | None:
    """The denoiser's per-cell sampling window, or None (not trained per cell)."""
    return float(cfg.cell_window) if cfg.row_noise == "cells" else None


def build_denoiser(cfg, steps: int, cells: int, channels: int, vocab: int, prefix: int, *, teacher, stdz,
                   schedule) -> nn.Module:
    """The denoiser of `distill` config `cfg` (arch dit or move) for (K, L, C) trajectories;
    arch move takes the teacher's configuration (and weights, for init teacher), the standardiser
    and the schedule."""
    dc = cfg.denoiser
    table = teacher.puzzle_emb if getattr(teacher.cfg, "puzzles", 1) > 1 else None  # ARC: one per puzzle id
    if dc.arch == "dit":
        return Denoiser(dc, steps, cells, channels, vocab, prefix=prefix, row_lag=row_lag_of(cfg),
                        cell_window=cell_window_of(cfg), puzzle_table=table)
    if dc.arch != "move":
        raise ValueError(f"denoiser arch must be dit or move, got {dc.arch!r}")
    if table is not None:
        raise ValueError("denoiser arch move takes no puzzle ids (a teacher with model.puzzles > 1): use arch dit")
    if dc.row_causal:
        raise ValueError("denoiser row_causal is a dit option (arch move computes row k from row k-1 already): "
                         "set distill.denoiser.row_causal: false with arch move")
    if dc.latent_cond:
        raise ValueError("denoiser latent_cond is a dit option (arch move carries the teacher's state instead): "
                         "set distill.denoiser.latent_cond: false with arch move")
    if cfg.row_noise == "cells":
        raise ValueError("denoiser arch move moves whole rows: it cannot take one noise level per cell "
                         "(row_noise: cells needs arch dit)")
    if cfg.state != "yz":
        raise ValueError(f"denoiser arch move models the teacher's (y, z) rows: it needs distill.state yz, got {cfg.state!r}")
    if cfg.final_only:
        raise ValueError("denoiser arch move moves row k from row k-1: it cannot model the final row alone (final_only)")
    return MoveDenoiser(dc, teacher.cfg, steps, cells, channels, vocab, prefix, stdz.mean, stdz.std,
                        schedule.alpha_bar, row_lag=row_lag_of(cfg),
                        teacher_state=teacher.state_dict() if dc.init == "teacher" else None)
