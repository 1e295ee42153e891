"""Trajectories as diffusion data: select states, standardise per channel, decode answers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..traces.store import TraceReader, from_numpy


def state_tensor(shard: dict[str, np.ndarray], state: str, dtype: str) -> torch.Tensor:
    """(M, K, L, C) float32: y, or y and z concatenated over channels."""
    if state not in ("y", "yz"):
        raise ValueError(f"distill.state must be y or yz, got {state!r}")
    y = from_numpy(shard["y"], dtype)
    if state == "y":
        return y
    z = from_numpy(shard["z"], dtype)
    if z.dim() != y.dim():
        raise ValueError("state yz needs traces recorded with inner: false")
    return torch.cat([y, z], dim=-1)


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


def fit_standardizer(reader: TraceReader, state: str, eps: float = 1e-5) -> Standardizer:
    """One streaming pass over every shard (float64 sums)."""
    dtype = reader.header["config"]["dtype"]
    s = s2 = None
    n = 0
    for i in range(len(reader.shards)):
        x = state_tensor(reader.load_shard(i, ["y", "z"]), state, dtype).double()
        x = x.reshape(-1, x.shape[-1])  # (N, C)
        s = x.sum(0) if s is None else s + x.sum(0)
        s2 = x.square().sum(0) if s2 is None else s2 + x.square().sum(0)
        n += x.shape[0]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt() + eps
    return Standardizer(mean.float(), std.float())


def teacher_y(x_std: torch.Tensor, stdz: Standardizer, projection: torch.Tensor | None, hidden: int) -> torch.Tensor:
    """Standardised states (..., C) -> the teacher's y (..., D).

    The first channels are y (after an optional projection with rows [mean; basis^T], undone
    here by y = mean + x basis^T, exact for a square orthogonal basis)."""
    x = stdz.inverse(x_std)
    if projection is None:
        return x[..., :hidden]
    mean, basis_t = projection[0], projection[1:]  # (D,), (C, D)
    return x[..., :basis_t.shape[0]] @ basis_t.to(x.device) + mean.to(x.device)


def decode_logits(teacher, x_std: torch.Tensor, stdz: Standardizer, projection: torch.Tensor | None) -> torch.Tensor:
    """Standardised states (B, L, C) of one step -> answer logits (B, L, V) via the frozen lm_head."""
    return teacher.lm_head(teacher_y(x_std, stdz, projection, teacher.cfg.hidden))
