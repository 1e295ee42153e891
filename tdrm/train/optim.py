"""Learning-rate schedule, AdamATan2, sign-SGD for sparse embedding tables, and EMA."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def warmup_constant(step: int, base_lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then constant (TRM's schedule)."""
    if warmup <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup)


def warmup_cosine(step: int, base_lr: float, warmup: int, total: int, final: float = 0.1) -> float:
    """Linear warmup, then cosine decay from base_lr to final * base_lr at step `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac)))


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of the division by sqrt(v) + eps (Everett et al. 2024, as in TRM's
    code): update = a * atan2(m_hat, b * sqrt(v_hat)); decoupled weight decay. Needs no eps."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, a=1.27, b=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].lerp_(p.grad.square(), 1 - b2)
                m_hat = st["m"] / (1 - b1 ** t)
                v_hat = st["v"] / (1 - b2 ** t)
                p.add_(torch.atan2(m_hat, group["b"] * v_hat.sqrt()), alpha=-group["lr"] * group["a"])


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD on the rows of an embedding table that the step's batch used (TRM's optimizer for the
    per-puzzle embeddings of ARC, lr 1e-2 in the reference): for every row whose gradient is not
    all zero, row <- row * (1 - lr * weight_decay) - lr * sign(grad row); rows the batch did not touch
    are left alone (no decay either), as a sparse embedding update would. The gradient of a row is
    the sum over the batch's samples that use it (a dense gradient of the table gives exactly that)."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"sign-SGD lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(p.shape[0], -1)  # (rows, D)
                used = g.ne(0).any(-1)  # (rows,)
                rows = p.view(p.shape[0], -1)  # a view: the update lands in p
                rows[used] = rows[used] * (1 - lr * wd) - lr * torch.sign(g[used])


def make_optimizer(name: str, params, lr: float, betas, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamatan2":
        return AdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"teacher.optimizer must be 'adamw' or 'adamatan2', got {name!r}")


class EMA:
    """Exponential moving average of a model's parameters: shadow = d * shadow + (1 - d) * param.

    With `warmup`, the decay at update u is min(d, (1 + u) / (10 + u)), so the average forgets
    the initial weights within the first few hundred updates (the TF / timm convention)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        for s, p in zip(self.model.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - d)
        for s, b in zip(self.model.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict, updates: int = 0) -> None:
        self.model.load_state_dict(sd)
        self.updates = updates


