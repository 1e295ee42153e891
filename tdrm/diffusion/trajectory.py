"""Trajectories as diffusion data: which states are modelled, standardisation, decoding the answer,
and the teacher's dynamics between generated steps.

`distill.state` picks the modelled rows and channels of a trace (per puzzle):
    y   K rows (supervision-step ends) of y;
    yz  K rows of y and z concatenated over channels;
    z   K*T rows, z at the end of every latent cycle (traces recorded with `inner: true`, or a
        teacher with T = 1). y is not modelled: it is recomputed with the teacher's y-update,
        y_c = f(y_{c-1}, z_c) from y_init, which is exact given the cycle-end z's.
The cell axis holds the recorded positions: the cells, or prefix + cells (`traces.prefix: true`),
which the teacher's own step needs (its mixer reads every position). Hence the dynamics term and
state z require the prefix positions whenever the teacher has any.

Shards become tensors in `tdrm.traces.tensors` (`state_tensor`, `fit_standardizer`); this
module is math on tensors only.

Shapes: B batch, R modelled rows, K supervision steps, L recorded positions (P prefix + N cells),
C channels (stored, possibly projected), D teacher hidden, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .samplers import top_margin


STATES = ("y", "yz", "z")


@dataclass(frozen=True)
class Layout:
    """How a trace maps to modelled rows: the state, the teacher's recursion (T, n), the recorded
    prefix positions P (0 when only cells were recorded) and whether z was recorded per update."""

    state: str
    T: int
    n: int
    prefix: int
    inner: bool

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"distill.state must be one of {STATES}, got {self.state!r}")
        if self.state == "yz" and self.inner:
            raise ValueError("distill.state yz needs traces recorded with inner: false (step-end z)")
        if self.state == "z" and not self.inner and self.T != 1:
            raise ValueError(f"distill.state z needs z at every cycle end, but the traces hold step ends of a "
                             f"T = {self.T} teacher: record them with traces.inner: true")

    @classmethod
    def of(cls, state: str, teacher_cfg, traces_cfg: dict) -> "Layout":
        return cls(state, teacher_cfg.T, teacher_cfg.n, teacher_cfg.prefix if traces_cfg["prefix"] else 0,
                   bool(traces_cfg["inner"]))

    @property
    def rows_per_step(self) -> int:
        return self.T if self.state == "z" else 1


@dataclass
class Standardizer:
    """Per-channel mean and std (C,) of the training trajectories."""

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


class Codec:
    """Standardised modelled rows <-> the frozen teacher's states, answers and dynamics.

    `projection` holds rows [mean; basis^T] (1 + C, D) of the traces' channel projection, undone
    by state = mean + x basis^T (exact for a square orthogonal basis), or is None."""

    def __init__(self, teacher, layout: Layout, stdz: Standardizer, projection: torch.Tensor | None):
        self.teacher, self.layout, self.stdz, self.projection = teacher, layout, stdz, projection
        self.hidden = teacher.cfg.hidden
        self.channels = self.hidden if projection is None else projection.shape[0] - 1
        if layout.prefix not in (0, teacher.cfg.prefix):
            raise ValueError(f"traces hold {layout.prefix} prefix positions, the teacher has {teacher.cfg.prefix}")
        if layout.state == "z":
            self._check_full("state z (y recomputed by the teacher's y-update)")

    # -- channels -------------------------------------------------------------------------
    def _unproject(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) stored channels -> (..., D) teacher states."""
        if self.projection is None:
            return x
        mean, basis_t = self.projection[0], self.projection[1:]  # (D,), (C, D)
        return x @ basis_t.to(x.device) + mean.to(x.device)

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) teacher states -> (..., C) stored channels."""
        if self.projection is None:
            return h
        mean, basis_t = self.projection[0], self.projection[1:]
        return (h - mean.to(h.device)) @ basis_t.to(h.device).T

    def _split(self, x_std: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Standardised rows (..., C') -> teacher states (y, z), each (..., D) or None."""
        x = self.stdz.inverse(x_std)
        c = self.channels
        if self.layout.state == "y":
            return self._unproject(x), None
        if self.layout.state == "yz":
            return self._unproject(x[..., :c]), self._unproject(x[..., c:])
        return None, self._unproject(x)

    # -- teacher states -------------------------------------------------------------------
    @property
    def needs_full_sequence(self) -> bool:
        return self.teacher.cfg.prefix > 0 and self.layout.prefix == 0

    def _check_full(self, what: str) -> None:
        if self.needs_full_sequence:
            raise ValueError(f"{what} runs the teacher's network, which reads its {self.teacher.cfg.prefix} prefix "
                             "position(s): record the traces with traces.prefix: true")

    def y_path(self, x_std: torch.Tensor) -> torch.Tensor:
        """(B, R, L, C') -> y after every modelled row (B, R, L, D); state z recomputes y by
        the teacher's y-update along the cycle ends."""
        y, z = self._split(x_std)
        if y is not None:
            return y
        b, r, l, d = z.shape
        h = self.teacher.y_init.to(z.dtype).expand(b, l, d)
        ys = []
        for c in range(r):
            h = self.teacher.update_y(h, z[:, c])
            ys.append(h)
        return torch.stack(ys, dim=1)

    def step_y(self, x_std: torch.Tensor) -> torch.Tensor:
        """y at every supervision-step end, cells only: (B, K, N, D)."""
        y = self.y_path(x_std)[:, self.layout.rows_per_step - 1::self.layout.rows_per_step]
        return y[:, :, self.layout.prefix:]

    def step_logits(self, x_std: torch.Tensor) -> torch.Tensor:
        """Answer logits decoded at every supervision step through the frozen lm_head: (B, K, N, V)."""
        return self.teacher.lm_head(self.step_y(x_std))

    def answer_logits(self, x_std: torch.Tensor) -> torch.Tensor:
        """Answer logits of the final state: (B, N, V)."""
        if self.layout.state == "z":
            return self.step_logits(x_std)[:, -1]
        y, _ = self._split(x_std[:, -1])
        return self.teacher.lm_head(y[:, self.layout.prefix:])

    def cell_confidence(self, x_std: torch.Tensor) -> torch.Tensor:
        """(B, R, L, C') -> (B, L): how sure the decoded answer is at each recorded position, the
        top-1 minus top-2 probability of the final state's digit; prefix positions, which decode to
        nothing, come first (+inf). What a per-cell sampler orders its cells by."""
        conf = top_margin(self.answer_logits(x_std))  # (B, N)
        if self.layout.prefix:
            conf = torch.cat([conf.new_full((conf.shape[0], self.layout.prefix), float("inf")), conf], dim=1)
        return conf

    # -- dynamics -------------------------------------------------------------------------
    def check_dynamics(self) -> None:
        """Raise ValueError unless these traces allow the dynamics-consistency term."""
        if self.layout.state == "y":
            raise ValueError("the dynamics-consistency term needs z: use distill.state yz or z")
        self._check_full("the dynamics-consistency term")

    def dynamics_residual(self, x_std: torch.Tensor, puzzle_tokens: torch.Tensor) -> torch.Tensor:
        """Standardised gap between each generated row and one teacher move from the row before
        (the teacher's initial state before the first), (B, R, L, C').

        yz: a move is one supervision step (T cycles); z: one cycle's n latent updates, with y
        recomputed from the generated z's. State y carries no z, so it has no dynamics. The moved
        states are a stop-gradient target: the gradient pulls each row towards the teacher's move
        from its predecessor, and the teacher's T(n+1) network calls per row run without autograd
        (backpropagating through them would cost about twice the denoiser's own step)."""
        self.check_dynamics()
        with torch.no_grad():
            moved = self._move(x_std.detach(), puzzle_tokens)
        return self.stdz.forward(moved) - x_std

    def _move(self, x_std: torch.Tensor, puzzle_tokens: torch.Tensor) -> torch.Tensor:
        """One teacher move from each row's predecessor, in stored channels (B, R, L, C')."""
        t = self.teacher
        x = t.input_embedding(puzzle_tokens)  # (B, L, D)
        b, r = x_std.shape[:2]
        y0, z0 = t.initial_state(b)
        y, z = self._split(x_std)  # (B, R, L, D) each; y None for state z
        if self.layout.state == "yz":
            y_prev = torch.cat([y0[:, None], y[:, :-1]], dim=1)
            z_prev = torch.cat([z0[:, None], z[:, :-1]], dim=1)
            yk, zk = y_prev.flatten(0, 1), z_prev.flatten(0, 1)  # (B R, L, D)
            xk = x.repeat_interleave(r, dim=0)
            for _ in range(t.cfg.T):
                yk, zk = t.cycle(yk, zk, xk)
            moved = torch.cat([self._project(yk), self._project(zk)], dim=-1).unflatten(0, (b, r))
        else:
            ys = self.y_path(x_std)  # (B, R, L, D) after each cycle
            y_prev = torch.cat([y0[:, None], ys[:, :-1]], dim=1)
            z_prev = torch.cat([z0[:, None], z[:, :-1]], dim=1)
            inj = (y_prev + x[:, None]).flatten(0, 1)
            zk = t.latent(z_prev.flatten(0, 1), inj)
            moved = self._project(zk).unflatten(0, (b, r))
        return moved
