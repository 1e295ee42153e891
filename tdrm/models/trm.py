"""TRM: Tiny Recursive Model (Jolicoeur-Martineau, arXiv 2510.04871), METHOD.md section 1.

One 2-block network f serves both updates, inputs are added (`f(h, inj) = blocks(h + inj)`):
    repeat n: z = f(z, y + x)       # latent reasoning
    y = f(y, z)                     # answer update
T such cycles make one supervision step; the first T-1 run without grad, the last with full
backprop through its 2(n+1) applications of f. The carry (y, z) is detached between steps.

Shapes: B batch, C cells, P prefix, L = P + C, D hidden, V vocab, K supervision steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Model
from .layers import Block, Linear, rope_tables, trunc_normal_


@dataclass
class Trace:
    """Per-supervision-step inference states: y, z (K, B, L, D), logits (K, B, C, V), q (K, B)."""

    y: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor
    q: torch.Tensor
    z_inner: torch.Tensor | None = None  # (K, T*n, B, L, D) when recorded


class TRM(nn.Module):
    def __init__(self, cfg: Model, cells: int, vocab: int):
        super().__init__()
        self.cfg, self.cells, self.vocab = cfg, cells, vocab
        self.seq = cfg.prefix + cells
        g = torch.Generator().manual_seed(cfg.init_seed)
        d = cfg.hidden
        self.embed_scale = math.sqrt(d)
        self.embed = nn.Parameter(trunc_normal_(torch.empty(vocab, d), 1 / self.embed_scale, g))
        # slot 0 of the prefix is the puzzle embedding, zero-initialised: one row (Sudoku) or one per
        # puzzle identifier (ARC: task x augmentation, `model.puzzles` rows, looked up by id); the
        # remaining prefix positions are constant zero registers
        if cfg.puzzles < 1:
            raise ValueError(f"model.puzzles must be >= 1, got {cfg.puzzles}")
        if cfg.puzzles > 1 and cfg.prefix < 1:
            raise ValueError(f"model.puzzles = {cfg.puzzles} puzzle embeddings need a prefix slot: set model.prefix >= 1")
        self.puzzle_emb = nn.Parameter(torch.zeros(cfg.puzzles, d)) if cfg.prefix > 0 else None
        self.pos = (nn.Parameter(trunc_normal_(torch.empty(self.seq, d), 1 / self.embed_scale, g))
                    if cfg.pos == "learned" else None)
        if cfg.pos not in ("none", "rope", "learned"):
            raise ValueError(f"model.pos must be none, rope or learned, got {cfg.pos!r}")
        if cfg.pos == "rope":
            cos, sin = rope_tables(self.seq, d // cfg.heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(
            Block(d, self.seq, cfg.mixer, cfg.heads, cfg.expansion, cfg.multiple_of, cfg.rms_eps, g)
            for _ in range(cfg.layers))
        # fixed random initial states, never trained
        self.register_buffer("y_init", trunc_normal_(torch.empty(d), 1.0, g))
        self.register_buffer("z_init", trunc_normal_(torch.empty(d), 1.0, g))
        self.lm_head = Linear(d, vocab, g)
        self.q_head = Linear(d, 1, g, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    # -- pieces ---------------------------------------------------------------------------
    def input_embedding(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, C), puzzle identifiers (B,) (a model with one puzzle embedding: None) -> x (B, L, D)."""
        x = F.embedding(tokens, self.embed)  # (B, C, D)
        if self.cfg.puzzles > 1 and puzzle_ids is None:
            raise ValueError(f"this model has {self.cfg.puzzles} puzzle embeddings: pass the puzzle ids")
        if puzzle_ids is not None:
            if puzzle_ids.shape != (x.shape[0],):
                raise ValueError(f"expected puzzle ids ({x.shape[0]},), got {tuple(puzzle_ids.shape)}")
            if self.puzzle_emb is None or bool(((puzzle_ids < 0) | (puzzle_ids >= self.cfg.puzzles)).any()):
                raise ValueError(f"puzzle ids must be in 0..{self.cfg.puzzles - 1} (model.puzzles) with a prefix slot")
        if self.cfg.prefix:
            pre = torch.zeros(x.shape[0], self.cfg.prefix, x.shape[-1], dtype=x.dtype, device=x.device)
            pre[:, 0] = self.puzzle_emb if puzzle_ids is None else self.puzzle_emb[puzzle_ids]
            x = torch.cat([pre, x], dim=1)  # (B, L, D)
        if self.pos is not None:
            x = 0.707106781 * (x + self.pos)  # 1/sqrt(2) keeps the variance of the sum
        return self.embed_scale * x  # the whole input, prefix included, is scaled by sqrt(D)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.seq, self.cfg.hidden)
        return self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone()

    def f(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        rope = (self.rope_cos, self.rope_sin) if self.cfg.pos == "rope" else None
        h = h + injection
        for block in self.blocks:
            h = block(h, rope)
        return h

    def latent(self, z: torch.Tensor, inj: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """The n latent updates z = f(z, y + x) of a cycle, inj = y + x; each new z appended to `record`."""
        for _ in range(self.cfg.n):
            z = self.f(z, inj)
            if record is not None:
                record.append(z)
        return z

    def update_y(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The answer update y = f(y, z) that ends a cycle."""
        return self.f(y, z)

    def cycle(self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor,
              record: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One latent cycle: n latent updates, then the answer update (the recursion, written once)."""
        z = self.latent(z, y + x, record)  # y + x is loop-invariant over the n updates
        return self.update_y(y, z), z

    def heads(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (B, L, D) -> logits (B, C, V) over the cells, halting logit q (B,) from position 0."""
        logits = self.lm_head(y[:, self.cfg.prefix:])
        q = self.q_head(y[:, 0]).squeeze(-1).float()
        return logits, q

    # -- one supervision step -------------------------------------------------------------
    def forward(self, y: torch.Tensor, z: torch.Tensor, tokens: torch.Tensor, puzzle_ids: torch.Tensor | None = None):
        """One supervision step from the puzzle tokens (B, C) (and ids (B,), with `model.puzzles` > 1):
        `step(y, z, input_embedding(tokens, puzzle_ids))`. The training step calls the model through
        this, so DistributedDataParallel sees the call."""
        return self.step(y, z, self.input_embedding(tokens, puzzle_ids))

    def step(self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor):
        """T cycles; grad flows through the last one only. Returns (y, z, logits, q)."""
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                y, z = self.cycle(y, z, x)
        y, z = self.cycle(y, z, x)
        logits, q = self.heads(y)
        return y, z, logits, q

    @torch.no_grad()
    def trace(self, tokens: torch.Tensor, steps: int | None = None, keep_states: bool = True, *,
              noise: float = 0.0, generator: torch.Generator | None = None, inner: bool = False,
              puzzle_ids: torch.Tensor | None = None) -> Trace:
        """Inference over exactly `steps` (default N_sup) supervision steps, recording each.

        noise: std of Gaussian noise added to z after every supervision step (PTRM-style latent
        noise, so that trajectories form a distribution); the recorded z is the noised one, the
        state the next step starts from. `generator` draws it (on the CPU, so runs repeat on any
        device). inner: also record z after every latent update, `z_inner` (K, T*n, B, L, D).
        puzzle_ids: (B,) rows of the puzzle-embedding table (models with `model.puzzles` > 1).
        """
        steps = steps or self.cfg.n_sup
        x = self.input_embedding(tokens, puzzle_ids)
        y, z = self.initial_state(tokens.shape[0])
        ys, zs, logits_, qs, inners = [], [], [], [], []
        for _ in range(steps):
            if inner:
                zi = []
                for _ in range(self.cfg.T):
                    y, z = self.cycle(y, z, x, record=zi)
                logits, q = self.heads(y)
                inners.append(torch.stack(zi))
            else:
                y, z, logits, q = self.step(y, z, x)
            if noise > 0:
                eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
                z = z + noise * eps
            if keep_states:
                ys.append(y)
                zs.append(z)
            logits_.append(logits)
            qs.append(q)
        stack = (lambda t: torch.stack(t)) if keep_states else (lambda t: torch.empty(0))
        tr = Trace(stack(ys), stack(zs), torch.stack(logits_), torch.stack(qs))
        tr.z_inner = torch.stack(inners) if inner else None
        return tr


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
