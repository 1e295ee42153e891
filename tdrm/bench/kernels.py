"""Whole-model rows of the kernel benchmark: `python -m tdrm.bench kernels`.

One TRM supervision step at the paper config (hidden 512, batch 768, T=3, n=6, MLP-t over 81
cells + 16 prefix), one no-grad cycle, and one denoiser forward/backward, each on the eager
plain-torch path, its `torch.compile`, the Triton kernels (through kernels/dispatch.py) and
`torch.compile` over the Triton path (the ops are custom ops, so inductor fuses what lies between
them). The per-op rows are `python -m kernels.bench`; both share its timing and table format.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.bench import Bench


def model_rows(bench: Bench, small: bool) -> None:
    from tdrm.config import Denoiser as DenoiserConfig
    from tdrm.config import Model
    from tdrm.models.denoiser import Denoiser
    from tdrm.models.losses import stablemax_cross_entropy
    from tdrm.models.trm import TRM

    dev, dt = bench.device, bench.dtype
    cfg = (Model(hidden=64, heads=2, T=2, n=2, n_sup=2, prefix=2, multiple_of=16) if small else
           Model(hidden=512, heads=8, multiple_of=256, T=3, n=6, n_sup=16, prefix=16))
    batch, cells, vocab = (4, 36, 8) if small else (768, 81, 11)
    trm = TRM(cfg, cells, vocab).to(dev, dt)
    g = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, cells), device=dev, generator=g)
    labels = torch.randint(1, vocab, (batch, cells), device=dev, generator=g)

    def trm_step():
        x = trm.input_embedding(tokens)
        y, z = trm.initial_state(batch)
        y, z, logits, q = trm.step(y, z, x)
        loss = stablemax_cross_entropy(logits, labels).mean() + 0.5 * F.binary_cross_entropy_with_logits(
            q.float(), torch.zeros_like(q, dtype=torch.float32))
        loss.backward()
        return loss

    # per step: T cycles of n+1 applications of f (2 blocks), the last cycle also backward (2x)
    d, length = cfg.hidden, cfg.prefix + cells
    inter = trm.blocks[0].mlp.gate.weight.shape[0]
    block = 2 * batch * length * (3 * d * inter) + 2 * batch * d * 3 * length * trm.blocks[0].mix.gate.weight.shape[0]
    applies = cfg.T * (cfg.n + 1)
    flops = cfg.layers * block * (applies + 2 * (cfg.n + 1))
    # separate wrappers (own code objects): dynamo's cache must not hand one path the other's graph
    cstep = torch.compile(lambda: trm_step()) if bench.compile else trm_step
    ctstep = torch.compile(lambda: trm_step()) if bench.compile else trm_step
    bench.row("TRM supervision step", f"B{batch} D{d} T{cfg.T} n{cfg.n}", {
        "eager": (trm_step, "torch"), "compile": (cstep, "torch"), "triton": (trm_step, "triton"),
        "compile_triton": (ctstep, "triton")}, 0, flops)
    with torch.no_grad():
        x = trm.input_embedding(tokens)
        y0, z0 = trm.initial_state(batch)
        fwd = lambda: trm.cycle(y0, z0, x)  # noqa: E731
        cfwd = torch.compile(fwd) if bench.compile else fwd
        bench.row("TRM no-grad cycle", f"B{batch} D{d} n{cfg.n}", {
            "eager": (fwd, "torch"), "compile": (cfwd, "torch"), "triton": (fwd, "triton")}, 0,
            cfg.layers * block * (cfg.n + 1))
    trm = None  # frees its memory before the denoiser row

    dcfg = (DenoiserConfig(hidden=32, layers=2, heads=2, attention="full", cell_mixer="attention") if small else
            DenoiserConfig(hidden=512, layers=8, heads=8, attention="full", cell_mixer="attention"))
    k, cells_d = (3, 37) if small else (12, 97)
    # fp32 weights under autocast (mixed precision, as the denoiser would train): its time embedding
    # is computed in fp32
    den = Denoiser(dcfg, steps=k, cells=cells_d, channels=64, vocab=vocab, prefix=1).to(dev)
    db = 2 if small else 16
    xt = torch.randn(db, k, cells_d, 64, device=dev, generator=g)
    t = torch.randint(0, 1000, (db,), device=dev, generator=g)
    pz = torch.randint(0, vocab, (db, cells_d - 1), device=dev, generator=g)

    def den_step():
        with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
            out = den(xt, t, pz)
        out.float().square().mean().backward()
    cden = torch.compile(lambda: den_step()) if bench.compile else den_step
    ctden = torch.compile(lambda: den_step()) if bench.compile else den_step
    bench.row("denoiser fwd+bwd", f"B{db} K{k + 1}xL{cells_d} D{dcfg.hidden}", {
        "eager": (den_step, "torch"), "compile": (cden, "torch"), "triton": (den_step, "triton"),
        "compile_triton": (ctden, "triton")})


