"""A model's answer along its trajectory, for pictures: one board per supervision step (teacher,
or TDRM's generated trajectory decoded step by step) or per sampling step (TDRM's x0 estimate
decoded at every denoiser call), with the probability of every cell's digit.

Probabilities are stablemax (the TRM head's training loss, METHOD.md section 1), max over digits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.board import Shape, from_tokens, shape_for_length, to_tokens
from ..data.solver import solve
from ..models.losses import stablemax_log_probs


@dataclass
class BoardPath:
    """puzzle, solution (C,) digits with 0 = blank (solution None if the puzzle has none);
    boards (S, C) digits, confidence (S, C) in [0, 1], one label per row."""

    puzzle: np.ndarray
    solution: np.ndarray | None
    boards: np.ndarray
    confidence: np.ndarray
    labels: list[str]
    shape: Shape
    title: str = ""

    def errors(self) -> np.ndarray:
        """(S, C) bool: a filled cell that differs from the solution (none without a solution)."""
        if self.solution is None:
            return np.zeros(self.boards.shape, bool)
        return (self.boards != self.solution[None]) & (self.boards > 0)


def _decode(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(S, C, V) logits -> boards (S, C) digits, confidence (S, C)."""
    p = stablemax_log_probs(logits.float()).exp()  # (S, C, V)
    conf, tok = p.max(-1)
    return from_tokens(tok.cpu().numpy()), conf.float().cpu().numpy()


def _solution(puzzle: np.ndarray, shape: Shape) -> np.ndarray | None:
    res = solve(puzzle, shape)
    return np.asarray(res.solutions[0]) if res.count else None


def teacher_path(model, puzzle: np.ndarray, device="cpu") -> BoardPath:
    """The teacher's answer after each of its N_sup supervision steps."""
    shape = shape_for_length(puzzle.size)
    tokens = torch.as_tensor(to_tokens(puzzle[None]), device=device)
    tr = model.trace(tokens, keep_states=False)  # logits (K, 1, C, V)
    boards, conf = _decode(tr.logits[:, 0])
    return BoardPath(puzzle, _solution(puzzle, shape), boards, conf,
                     [f"step {k + 1}" for k in range(len(boards))], shape, "TRM teacher, per supervision step")


def tdrm_path(model, codec, schedule, puzzle: np.ndarray, *, over: str = "steps", sampler: str = "ddim",
              steps: int = 20, eta: float = 0.0, seed: int = 0, device="cpu") -> BoardPath:
    """TDRM: `over="steps"` decodes every supervision step of one generated trajectory;
    `over="sampling"` decodes the final answer of the x0 estimate at every sampling step."""
    from ..diffusion.sampling import generate

    if over not in ("steps", "sampling"):
        raise ValueError(f"over must be 'steps' or 'sampling', got {over!r}")
    shape = shape_for_length(puzzle.size)
    tokens = torch.as_tensor(to_tokens(puzzle[None]), device=device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = generate(model, tokens, schedule, sampler=sampler, steps=steps, eta=eta, generator=gen,
                       return_path=over == "sampling", confidence=codec.cell_confidence)
        if over == "steps":
            logits = codec.step_logits(out)[0]  # (K, C, V)
            labels = [f"step {k + 1}" for k in range(logits.shape[0])]
            title = f"TDRM, generated trajectory per supervision step ({sampler}, {steps} sampling steps)"
        else:
            logits = torch.stack([codec.answer_logits(s.x0_hat)[0] for s in out.path])  # (S, C, V)
            labels = [f"call {i + 1} (t={s.t if isinstance(s.t, int) else '/'.join(map(str, s.t.tolist()))})"
                      for i, s in enumerate(out.path)]
            title = f"TDRM, final answer of the x0 estimate per sampling step ({sampler})"
    boards, conf = _decode(logits)
    return BoardPath(puzzle, _solution(puzzle, shape), boards, conf, labels, shape, title)


def figure_size(panels: int, per_row: int = 8) -> tuple[float, float, int]:
    """(width, height) inches and dpi of `trajectory_png`: 2.2 x 2.5 inches per board, 100 dpi,
    at most `per_row` boards per row, plus 0.85 inch for the title and the colour bar."""
    cols = min(panels, per_row)
    rows = -(-panels // per_row)
    return 2.2 * cols, 2.5 * rows + 0.85, 100
