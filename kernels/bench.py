"""Kernel benchmark: `python -m kernels.bench [--out bench.json]`.

For every op at the paper config's shapes (hidden 512, batch 768, MLP-t over 81 cells + 16
prefix), times three paths: eager PyTorch (the plain-torch references), `torch.compile` of the
same references, and the Triton kernels (eager, through kernels/dispatch.py); for attention also
PyTorch SDPA forced to its flash backend. Prints ms, achieved GB/s and TFLOP/s of the Triton path
and its speedups, and writes all of it as JSON with `--out`. The whole-model rows (a TRM
supervision step, a denoiser forward/backward) use the library's models, so they live in
`python -m tdrm.bench kernels` (kernels/ does not import tdrm).

Needs CUDA. Without it, it says so and exits 0, unless `--device cpu --small` asks for a smoke run
at tiny shapes (the Triton path then runs in the interpreter, so its times mean nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def _kernels(mode: str):
    old = os.environ.get("TDRM_KERNELS")
    os.environ["TDRM_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TDRM_KERNELS")
        else:
            os.environ["TDRM_KERNELS"] = old


def _time(fn, device: torch.device, reps: int) -> float:
    """Median ms per call."""
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=max(100, reps * 10), return_mode="median"))
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * sorted(ts)[len(ts) // 2]


def _grad_fn(f, inputs, dout_like=None):
    """A callable running f forward and backward (grads of the inputs that require them)."""
    def run():
        out = f()
        out = out[-1] if isinstance(out, tuple) else out
        torch.autograd.grad(out, [t for t in inputs if t.requires_grad], torch.ones_like(out))
    return run


class Bench:
    def __init__(self, device, dtype, reps, compile_, out=None, header=None):
        self.device, self.dtype, self.reps, self.compile = device, dtype, reps, compile_
        self.rows: list[dict] = []
        self.out, self.header = out, header or {}

    def row(self, name, shape, paths: dict, bytes_=0.0, flops=0.0):
        """paths: label -> (callable, TDRM_KERNELS mode); 'compile' callables get compiled here."""
        times = {}
        for label, (fn, mode) in paths.items():
            if label.startswith("compile") and not self.compile:
                continue
            with _kernels(mode):
                try:
                    times[label] = _time(fn, self.device, self.reps)
                except Exception as e:  # a path that fails is reported, not hidden
                    times[label] = None
                    print(f"  {name} [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                          file=sys.stderr)
        t = times.get("triton")
        r = {"op": name, "shape": shape, "ms": times}
        if t:
            r["GB/s"] = bytes_ / t / 1e6 if bytes_ else None
            r["TFLOP/s"] = flops / t / 1e9 if flops else None
            for base in ("eager", "compile", "sdpa_flash"):
                if times.get(base):
                    r[f"x_{base}"] = times[base] / t
        self.rows.append(r)
        print(_fmt(r), flush=True)
        self.save()

    def save(self):
        """Rewrite the JSON after every row: a run cut short by a time limit keeps what it measured."""
        if self.out:
            with open(self.out, "w") as f:
                json.dump({**self.header, "rows": self.rows}, f, indent=1)


def _fmt(r):
    ms = r["ms"]
    cell = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    return (f"{r['op']:<28} {r['shape']:<26} " + " ".join(f"{cell(ms.get(k)):>9}" for k in
            ("eager", "compile", "sdpa_flash", "triton", "compile_triton")) +
            f" {cell(r.get('GB/s'), '{:.0f}'):>7} {cell(r.get('TFLOP/s'), '{:.1f}'):>7}"
            f" {cell(r.get('x_eager'), '{:.2f}x'):>8} {cell(r.get('x_compile'), '{:.2f}x'):>8}"
            f" {cell(r.get('x_sdpa_flash'), '{:.2f}x'):>8}")


HEADER = (f"{'op':<28} {'shape':<26} {'eager':>9} {'compile':>9} {'sdpa_fl':>9} {'triton':>9} {'comp+tri':>9} "
          f"{'GB/s':>7} {'TFLOP/s':>7} {'vs eager':>8} {'vs comp':>8} {'vs flash':>8}")


def _ops(bench: Bench, small: bool):
    from kernels.adaln import adaln, adaln_reference
    from kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_reference
    from kernels.attention import attention, attention_reference
    from kernels.mlp_t import mlp_t, mlp_t_reference
    from kernels.swiglu import swiglu, swiglu_reference

    dev, dt = bench.device, bench.dtype
    g = torch.Generator(device=dev).manual_seed(0)
    rn = lambda *s, grad=False: torch.randn(*s, device=dev, dtype=dt, generator=g).requires_grad_(grad)  # noqa: E731
    cmp = (lambda f: torch.compile(f)) if bench.compile else (lambda f: f)
    es = torch.finfo(dt).bits // 8
    b, length, d = (4, 97, 64) if small else (768, 97, 512)
    inter = -(-round(4.0 * length * 2 / 3) // (16 if small else 256)) * (16 if small else 256)  # TRM's MLP-t width
    shape = f"{b}x{length}x{d}"

    x, r = rn(b, length, d, grad=True), rn(b, length, d, grad=True)
    ref, comp = add_rmsnorm_reference, cmp(add_rmsnorm_reference)
    bench.row("add_rmsnorm fwd", shape, {"eager": (lambda: ref(x, r), "torch"), "compile": (lambda: comp(x, r), "torch"),
                                         "triton": (lambda: add_rmsnorm(x, r), "triton")}, 3 * x.numel() * es)
    bench.row("add_rmsnorm fwd+bwd", shape, {
        "eager": (_grad_fn(lambda: ref(x, r), [x, r]), "torch"), "compile": (_grad_fn(lambda: comp(x, r), [x, r]), "torch"),
        "triton": (_grad_fn(lambda: add_rmsnorm(x, r), [x, r]), "triton")}, 8 * x.numel() * es)

    gg, uu = rn(b * length, 4 * d, grad=True), rn(b * length, 4 * d, grad=True)
    sref, scomp = swiglu_reference, cmp(swiglu_reference)
    bench.row("swiglu fwd", f"{b * length}x{4 * d}", {
        "eager": (lambda: sref(gg, uu), "torch"), "compile": (lambda: scomp(gg, uu), "torch"),
        "triton": (lambda: swiglu(gg, uu), "triton")}, 3 * gg.numel() * es)
    bench.row("swiglu fwd+bwd", f"{b * length}x{4 * d}", {
        "eager": (_grad_fn(lambda: sref(gg, uu), [gg, uu]), "torch"),
        "compile": (_grad_fn(lambda: scomp(gg, uu), [gg, uu]), "torch"),
        "triton": (_grad_fn(lambda: swiglu(gg, uu), [gg, uu]), "triton")}, 8 * gg.numel() * es)

    h = rn(b, length, d, grad=True)
    ws = [torch.randn(inter, length, device=dev, generator=g) / length ** 0.5,
          torch.randn(inter, length, device=dev, generator=g) / length ** 0.5,
          torch.randn(length, inter, device=dev, generator=g) / inter ** 0.5]
    ws = [w.to(dt).requires_grad_(True) for w in ws]
    mflops = 6 * b * d * length * inter
    mref, mcomp = mlp_t_reference, cmp(mlp_t_reference)
    with torch.no_grad():
        bench.row("mlp_t fwd (no grad)", f"{shape} I={inter}", {
            "eager": (lambda: mref(h, *ws), "torch"), "compile": (lambda: mcomp(h, *ws), "torch"),
            "triton": (lambda: mlp_t(h, *ws), "triton")}, 2 * h.numel() * es, mflops)
    bench.row("mlp_t fwd+bwd", f"{shape} I={inter}", {
        "eager": (_grad_fn(lambda: mref(h, *ws), [h, *ws]), "torch"),
        "compile": (_grad_fn(lambda: mcomp(h, *ws), [h, *ws]), "torch"),
        "triton": (_grad_fn(lambda: mlp_t(h, *ws), [h, *ws]), "triton")}, 0, 4 * mflops)

    for (ab, heads, al) in ([(2, 2, 130)] if small else [(256, 8, 97), (64, 8, 325), (16, 8, 1300)]):
        q, k, v = (rn(ab, heads, al, 64, grad=True) for _ in range(3))
        aflops = 4 * ab * heads * al * al * 64
        aref, acomp = attention_reference, cmp(attention_reference)

        def flash(q=q, k=k, v=v):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
        paths = {"eager": (lambda q=q, k=k, v=v: aref(q, k, v), "torch"),
                 "compile": (lambda q=q, k=k, v=v: acomp(q, k, v), "torch"),
                 "triton": (lambda q=q, k=k, v=v: attention(q, k, v), "triton")}
        if dev.type == "cuda":
            paths["sdpa_flash"] = (flash, "torch")
        with torch.no_grad():
            bench.row("attention fwd", f"{ab}x{heads}x{al}x64", paths, 4 * q.numel() * es, aflops)
        bench.row("attention fwd+bwd", f"{ab}x{heads}x{al}x64",
                  {k_: (_grad_fn(f, [q, k, v]), m) for k_, (f, m) in paths.items()}, 0, 3.5 * aflops)

    nb, nt, nd = (2, 130, 64) if small else (16, 1300, 512)
    hh, aa = rn(nb, nt, nd, grad=True), rn(nb, nt, nd, grad=True)
    mod = rn(nb, 3 * nd, grad=True)
    sh, sc, gt = mod.chunk(3, -1)
    dref, dcomp = adaln_reference, cmp(adaln_reference)
    paths = {"eager": (lambda: dref(hh, sh, sc, aa, gt), "torch"), "compile": (lambda: dcomp(hh, sh, sc, aa, gt), "torch"),
             "triton": (lambda: adaln(hh, sh, sc, aa, gt), "triton")}
    bench.row("adaln+gated residual fwd", f"{nb}x{nt}x{nd}", paths, 4 * hh.numel() * es)
    bench.row("adaln+gated residual fwd+bwd", f"{nb}x{nt}x{nd}",
              {k_: (_grad_fn(f, [hh, aa, mod]), m) for k_, (f, m) in paths.items()}, 11 * hh.numel() * es)


def setup(device: str, dtype: str, small: bool, reps: int, compile_: bool, out: str | None) -> Bench | None:
    """The Bench for a run, with its header printed; None (after saying why) when the device
    cannot run it: no CUDA, or a CPU run that is not --small."""
    if device == "cuda" and not torch.cuda.is_available():
        print("kernels.bench: no CUDA device here; the Triton kernels are measured on a GPU "
              "(kernels/gpu_check.sh). Nothing to do.")
        return None
    if device == "cpu" and not small:
        raise ValueError("on CPU only --small runs (the Triton path is the interpreter)")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dev = torch.device(device)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (interpreter)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    bench = Bench(dev, dt, reps, compile_, out, {"device": name, "dtype": dtype, "torch": torch.__version__,
                                                "commit": commit})
    print(f"kernels.bench on {name}, {dtype}, torch {torch.__version__}, commit {commit}")
    print("ms per call (median); GB/s and TFLOP/s of the Triton path; speedups = other path's ms / Triton's")
    print(HEADER)
    return bench


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu with --small")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--small", action="store_true", help="tiny shapes (a smoke run; times mean nothing)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    try:
        bench = setup(a.device, a.dtype, a.small, a.reps, not a.no_compile, a.out)
    except ValueError as e:
        print(f"kernels.bench: {e}", file=sys.stderr)
        return 2
    if bench is None:
        return 0
    _ops(bench, a.small)
    bench.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
