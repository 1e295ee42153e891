"""Trace shards as the tensors the diffusion model is trained on: the modelled rows of a shard
and the per-channel standardisation fitted over all shards (`tdrm.diffusion.trajectory.Layout`
says which rows; the codec there is math on tensors and never reads storage)."""
from __future__ import annotations

import numpy as np
import torch

from ..diffusion.trajectory import Layout, Standardizer
from .store import TraceReader, from_numpy


def state_tensor(shard: dict[str, np.ndarray], layout: Layout, dtype: str) -> torch.Tensor:
    """(M, R, L, C) float32: the modelled rows of a shard with fields y, z."""
    if layout.state == "y":
        return from_numpy(shard["y"], dtype)
    z = from_numpy(shard["z"], dtype)
    if layout.state == "yz":
        return torch.cat([from_numpy(shard["y"], dtype), z], dim=-1)
    if layout.inner:  # (M, K, T*n, L, C) -> cycle ends (M, K*T, L, C)
        z = z[:, :, layout.n - 1::layout.n]
        return z.reshape(z.shape[0], -1, *z.shape[3:])
    return z


def fit_standardizer(reader: TraceReader, layout: Layout, eps: float = 1e-5) -> Standardizer:
    """One streaming pass over every shard (float64 sums)."""
    dtype = reader.header["config"]["dtype"]
    s = s2 = None
    n = 0
    for i in range(len(reader.shards)):
        x = state_tensor(reader.load_shard(i, ["y", "z"]), layout, dtype).double()
        x = x.reshape(-1, x.shape[-1])  # (N, C)
        s = x.sum(0) if s is None else s + x.sum(0)
        s2 = x.square().sum(0) if s2 is None else s2 + x.square().sum(0)
        n += x.shape[0]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt() + eps
    return Standardizer(mean.float(), std.float())
