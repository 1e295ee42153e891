"""Chain carry: train the denoiser on its own sampling chain, TRM-style (issue 13, a 9x9 design arm).

Truth-noised training shows every call a noised copy of the truth; error-correcting batches
(`self_correct_prob`) show it one round of its own estimate. The carry goes all the way: a batch
of slots, each a sampling chain in progress (the DDIM eta-0 chain that evaluation runs, at
`sample_steps` calls). Every carry step makes one call on every slot at that slot's level, takes
the loss of its estimate against the slot's truth (deep supervision, as TRM's supervision steps),
then moves the slot one reverse step with the detached estimate (no backpropagation between
calls, as TRM's detached carry). Finished chains are refilled with fresh trajectories from the
step's batch. The denoiser thus learns to improve on exactly the states its own chain visits.

Slots start staggered (slot i at call i mod S, from the truth noised to that level), so that
every step refills about B / S slots and every level is in every batch. A finished slot i takes
row i of the step's batch, and i counts rows of the global batch: under data parallelism each
rank keeps the chains of its own rows (`dist.rows`), and the carry is the one-process carry.

With the denoiser's `latent_cond` each slot also carries the last call's hidden state (detached,
zeros for a fresh chain), as the sampler passes it from call to call.

Shapes: b slots, K rows, L positions, C channels, N cells, S calls per chain, D hidden.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..diffusion.samplers import row_step, timesteps
from ..diffusion.schedules import Schedule, q_sample


def chain_levels(schedule: Schedule, steps: int) -> torch.Tensor:
    """(S + 1,) the levels the evaluation chain visits, T = t_0 > ... > t_{S-1} >= 1, then 0."""
    return torch.tensor(timesteps(schedule, steps) + [0], dtype=torch.long)


@dataclass
class Carry:
    """Chains in progress; `m` is each slot's next call (S: finished, to be refilled)."""

    x0: torch.Tensor       # (b, K, L, C) standardised truth
    x: torch.Tensor        # (b, K, L, C) chain state at level levels[m]
    prev: torch.Tensor     # (b, K, L, C) the last estimate (zeros before the first call)
    m: torch.Tensor        # (b,) long
    puzzle: torch.Tensor   # (b, N)
    targets: torch.Tensor  # (b, N) or (b, K, N): the cross-entropy targets
    hidden: torch.Tensor | None = None  # (b, K+1, L, D) the last call's hidden state (latent_cond), None = zeros

    def state_dict(self) -> dict:
        return {f.name: None if (v := getattr(self, f.name)) is None else v.cpu() for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict, device) -> "Carry":
        return cls(**{f.name: None if (v := state.get(f.name)) is None else v.to(device) for f in fields(cls)})


def start(levels: torch.Tensor, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor, puzzle: torch.Tensor,
          targets: torch.Tensor, first: int = 0) -> Carry:
    """A carry of b = len(x0) slots, slot i at call (first + i) mod S from the truth noised (eps) to
    its level; `first`: the global index of this rank's first row."""
    s = len(levels) - 1
    m = (first + torch.arange(x0.shape[0], device=x0.device)) % s  # (b,)
    x = q_sample(x0, levels.to(x0.device)[m], schedule, eps)
    return Carry(x0, x, torch.zeros_like(x0), m, puzzle, targets)


def refill(carry: Carry, levels: torch.Tensor, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor,
           puzzle: torch.Tensor, targets: torch.Tensor) -> tuple[Carry, int]:
    """Finished slots (m = S) restart at call 0: slot i with row i of the fresh (x0, eps, puzzle,
    targets) (row i mod n when an epoch's last batch has fewer rows n than slots). Returns
    (carry, refilled)."""
    s = len(levels) - 1
    done = (carry.m >= s).nonzero().flatten()  # (r,)
    if len(done) == 0:
        return carry, 0
    if x0.shape[0] < 1:
        raise ValueError("refilling finished chains needs at least one fresh trajectory")
    src = done % x0.shape[0]
    t0 = levels[:1].to(x0.device).expand(len(done))
    c = Carry(*(None if (v := getattr(carry, f.name)) is None else v.clone() for f in fields(carry)))
    c.x0[done] = x0[src]
    c.x[done] = q_sample(x0[src], t0, schedule, eps[src])
    c.prev[done] = 0.0
    c.m[done] = 0
    c.puzzle[done] = puzzle[src]
    c.targets[done] = targets[src]
    if c.hidden is not None:
        c.hidden[done] = 0.0
    return c, len(done)


def advance(carry: Carry, levels: torch.Tensor, schedule: Schedule, x0_hat: torch.Tensor,
            hidden: torch.Tensor | None = None) -> Carry:
    """One deterministic DDIM reverse step of every slot with its (detached) estimate x0_hat
    (b, K, L, C), from level levels[m] to levels[m + 1]: what the sampler at eta 0 feeds the next call;
    `hidden` (b, K+1, L, D): the call's hidden state, carried to the next call (latent_cond)."""
    lv = levels.to(carry.m.device)
    k = carry.x.shape[1]
    t = lv[carry.m][:, None].expand(-1, k)  # (b, K)
    t_next = lv[carry.m + 1][:, None].expand(-1, k)
    x0_hat = x0_hat.detach()
    x_next = row_step(schedule, carry.x, x0_hat, t, t_next, eta=0.0)[0]
    return Carry(carry.x0, x_next, x0_hat, carry.m + 1, carry.puzzle, carry.targets,
                 None if hidden is None else hidden.detach())
