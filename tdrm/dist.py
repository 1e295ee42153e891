"""Data parallelism under torchrun (issue 15): PyTorch's own engine, DistributedDataParallel over
gloo on CPU and NCCL on CUDA; nothing home-made but the slicing of the global batch.

A training stage launched by `torchrun --nproc_per_node N` (what dvc.yaml runs with `dist.nproc`)
calls `setup`, which reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) and joins the
process group; launched as a plain `python` process it returns a one-process `World` and nothing
distributed happens. The loops keep the global batch of params.yaml and give rank r the rows
`rows(n, world)` of every global batch, so every rank draws the same random numbers for the whole
batch (noise levels, noise, coin flips) and keeps its own slice: results do not depend on the
world size beyond floating-point summation order. Only rank 0 writes files and the Sacred run.
RL is the exception: its ranks keep different numbers of rollout groups, so it averages gradients
with one all_reduce per optimizer step (`gradient_sync`) instead of DDP's per-backward hooks.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nodes: int = 1
    backend: str | None = None  # None: one process, no process group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def record(self) -> dict:
        """What a run records of its launch (metrics, Sacred config)."""
        return {"world_size": self.size, "backend": self.backend or "none", "nodes": self.nodes}


SINGLE = World()


def from_env(env=os.environ) -> World:
    """The world torchrun describes in `env` (one process when WORLD_SIZE is unset or 1)."""
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    per_node = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(rank=rank, size=size, local_rank=local, nodes=max(1, size // max(per_node, 1)))


def setup(device: torch.device, timeout_s: float = 1800.0, env=os.environ) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA; collectives time out
    after `timeout_s`, so a dead rank ends the job instead of hanging it) and pick this rank's
    device (cuda:LOCAL_RANK on CUDA). One process: (SINGLE, device) and no process group."""
    w = from_env(env)
    if not w.distributed:
        return w, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(w.rank, w.size, w.local_rank, w.nodes, backend), device


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, world: World, what: str) -> int:
    """The per-rank batch: global / world size, with a clear error when it does not divide."""
    if global_batch % world.size:
        raise ValueError(f"{what} = {global_batch} does not divide over {world.size} processes "
                         f"(dist.nproc x nodes): choose a multiple of {world.size}")
    return global_batch // world.size


def rows(n: int, world: World) -> slice:
    """Rank r's contiguous rows of a global batch of n (sizes differ by at most one, as
    numpy.array_split; a rank may get none when n < world size)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def batch_shares(n: int, batch_size: int, world: World):
    """For each batch of `batch_size` of n items in order (the last may be short): (its size, this
    rank's rows of it `rows(size, world)`, the same rows as a slice of the n items). How
    evaluation splits its batches over ranks."""
    for i in range(0, n, batch_size):
        size = min(batch_size, n - i)
        mine = rows(size, world)
        yield size, mine, slice(i + mine.start, i + mine.stop)


def loss_scale(n_local: int, n_global: int, world: World) -> float:
    """Factor on a rank's per-sample-mean loss so that DDP's gradient average over ranks equals the
    gradient of the mean over the whole global batch, also when the ranks' rows differ in number
    (an epoch's last, short batch): n_local * world / n_global (1 when they are equal)."""
    return n_local * world.size / n_global


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks in backward; the
    parameters are broadcast from rank 0 at construction), or the model itself in one process."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def gradient_sync(model: torch.nn.Module, n_local: int, n_global: int, world: World):
    """For loops whose ranks make different numbers of backward passes per optimizer step (RL: a
    rank keeps however many groups had reward variance, maybe none), where DDP's per-backward
    reducer does not fit: a callable that, before each optimizer step, sums every rank's gradients
    weighted n_local / n_global (so the result is the gradient of the mean over all n_global
    samples of per-rank means over n_local) with one all_reduce. Every trainable parameter takes
    part (zeros where a rank has no gradient), so ranks that start equal stay equal. One process: None."""
    if not world.distributed:
        return None
    params = [p for p in model.parameters() if p.requires_grad]

    def sync() -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params]) * (n_local / n_global)
        dev = _comm_device(world)
        buf = flat.to(dev)
        dist.all_reduce(buf)
        buf = buf.to(flat.device)
        i = 0
        for p in params:
            p.grad.copy_(buf[i:i + p.numel()].view_as(p))
            i += p.numel()
    return sync


def _comm_device(world: World) -> torch.device:
    """Where collective buffers live: NCCL needs CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", world.local_rank) if world.backend == "nccl" else torch.device("cpu")


def all_mean(values: list[float], world: World, weight: float = 1.0) -> list[float]:
    """Weighted mean over ranks of a list of floats (each rank's values weighted by `weight`,
    e.g. its number of rows); NaN stays NaN only where every rank has NaN."""
    if not world.distributed:
        return list(values)
    t = torch.tensor([[v if v == v else 0.0 for v in values] + [0.0],
                      [weight if v == v else 0.0 for v in values] + [weight]], dtype=torch.float64)
    t[0, :-1] *= t[1, :-1]
    t = t.to(_comm_device(world))
    dist.all_reduce(t)
    return [float(s / w) if w > 0 else float("nan") for s, w in zip(t[0, :-1].tolist(), t[1, :-1].tolist())]


def gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's rows of `x` in rank order (the inverse of `rows`): every rank
    gets the whole batch. Ranks may hold different numbers of rows."""
    if not world.distributed:
        return x
    if x.dtype == torch.bool:  # gloo has no bool collectives
        return gather_rows(x.to(torch.uint8), world).bool()
    dev = _comm_device(world)
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=dev)
    counts = [torch.zeros_like(n) for _ in range(world.size)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    pad = max(counts)
    buf = torch.zeros((pad, *x.shape[1:]), dtype=x.dtype, device=dev)
    buf[:x.shape[0]] = x.detach().to(dev)
    parts = [torch.zeros_like(buf) for _ in range(world.size)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(x.device)


def all_gather_objects(obj, world: World) -> list:
    """Every rank's picklable `obj`, in rank order (one process: [obj])."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
