"""The `tdrm` command: eval, solve, rate."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def cmd_eval(a) -> int:
    from .data.loaders import load_puzzles
    from .device import resolve_device
    from .eval.teacher import evaluate
    from .pipeline import check_size, load_teacher

    from .train.checkpoint import load as load_checkpoint

    device = resolve_device(a.device)
    kind = load_checkpoint(a.checkpoint).get("kind")
    ps = load_puzzles(a.puzzles, limit=a.limit, skip_bad=a.skip_bad)
    if ps.skipped:
        print(f"skipped {ps.skipped} bad rows", file=sys.stderr)
    if kind == "tdrm":
        res = _eval_tdrm(a, ps, device)
    else:
        model, ck = load_teacher(a.checkpoint, device, ema=not a.raw)
        check_size(ck, ps.shape.cells, str(a.puzzles))
        res = evaluate(model, ps, a.batch_size, device, steps=a.steps, progress=True)
    res.pop("correct", None)
    res.update(checkpoint=str(a.checkpoint), puzzles=str(a.puzzles), weights="raw" if a.raw else "ema")
    lo, hi = res["ci95"]
    rows = [("puzzles", f"{a.puzzles} (n={res['n']})"),
            ("exact accuracy", f"{res['exact_accuracy']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]"),
            ("seconds", f"{res['seconds']:.2f} ({res['puzzles_per_second']:.1f} puzzles/s)")]
    if "per_step_exact_accuracy" in res:
        rows.insert(2, ("cell accuracy", f"{res['cell_accuracy']:.4f}"))
        rows.insert(3, ("per step exact", " ".join(f"{v:.3f}" for v in res["per_step_exact_accuracy"])))
        rows += [(f"rating {k}", f"{v['exact_accuracy']:.4f} (n={v['n']})") for k, v in res["by_rating"].items()]
    else:
        rows.insert(2, ("sampler", f"{res['sampler']} steps={res['steps']} eta={res['eta']} samples={res['samples']}"))
        rows.insert(3, ("valid fraction", f"{res['valid_fraction']:.4f}"))
    print(_table(rows))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _eval_tdrm(a, ps, device) -> dict:
    from .eval.tdrm import evaluate_tdrm
    from .train.distill import load_tdrm

    model, codec, schedule, ck = load_tdrm(a.checkpoint, device)
    if ck["teacher"]["cells"] != ps.shape.cells:
        raise ValueError(f"size mismatch: the checkpoint models {ck['teacher']['cells']}-cell boards "
                         f"but {a.puzzles} has {ps.shape.cells}-cell puzzles")
    d = ck["config"]["distill"]
    return evaluate_tdrm(model, codec, schedule, ps, sampler=a.sampler or d["sampler"],
                         steps=a.steps or d["sample_steps"], eta=d["eta"] if a.eta is None else a.eta,
                         samples=a.samples or d["samples"], seed=ck["config"]["common"]["seed"] if a.seed is None else a.seed,
                         batch_size=a.batch_size, device=device, progress=True)


def cmd_solve(a) -> int:
    import torch

    from .data.board import from_tokens, parse, pretty, shape_for_length, to_tokens
    from .data.solver import solve

    puzzle = parse(a.puzzle)
    shape = shape_for_length(puzzle.size)
    if not a.checkpoint:
        res = solve(puzzle, shape)
        if res.count == 0:
            print("no solution", file=sys.stderr)
            return 1
        print(pretty(res.solutions[0], shape))
        print(f"rating (guesses): {res.guesses}; unique: {res.unique}")
        return 0
    from .device import resolve_device
    from .pipeline import check_size, load_teacher

    device = resolve_device(a.device)
    model, ck = load_teacher(a.checkpoint, device)
    check_size(ck, shape.cells, "the puzzle")
    tr = model.trace(torch.as_tensor(to_tokens(puzzle[None]), device=device), keep_states=False)
    boards = from_tokens(tr.logits.argmax(-1)[:, 0].cpu().numpy())  # (K, C)
    from .data.board import is_solution
    for k, b in enumerate(boards, start=1):
        print(f"step {k}: {'solved' if is_solution(puzzle, b, shape) else 'not solved'}")
        print(pretty(b, shape) + "\n")
    return 0 if is_solution(puzzle, boards[-1], shape) else 1


def cmd_rate(a) -> int:
    from .data.loaders import load_puzzles, write_csv

    ps = load_puzzles(a.puzzles, skip_bad=a.skip_bad, check_unique=True, limit=a.limit)
    write_csv(a.out, ps)
    print(f"rated {len(ps)} puzzles -> {a.out}; median rating {int(np.median(ps.ratings))}"
          + (f"; skipped {ps.skipped} bad rows" if ps.skipped else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdrm", description="Tiny Diffusion Recursive Models")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="evaluate a checkpoint on a puzzle file")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--puzzles", required=True, help="Sudoku-Extreme CSV or puzzle list")
    e.add_argument("--out", help="write metrics JSON here")
    e.add_argument("--limit", type=int)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--steps", type=int, help="teacher: supervision steps (default N_sup); "
                   "TDRM: sampling steps (default from the checkpoint)")
    e.add_argument("--sampler", choices=["ddim", "ddpm"], help="TDRM sampler (default from the checkpoint)")
    e.add_argument("--eta", type=float, help="TDRM DDIM eta (default from the checkpoint)")
    e.add_argument("--samples", type=int, help="TDRM samples per puzzle, first valid one kept")
    e.add_argument("--seed", type=int, help="TDRM sampling seed (default: the run's seed)")
    e.add_argument("--raw", action="store_true", help="use raw weights instead of EMA")
    e.add_argument("--skip-bad", action="store_true", help="skip bad rows instead of failing")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_eval)
    s = sub.add_parser("solve", help="solve one puzzle (exact solver, or a model checkpoint)")
    s.add_argument("puzzle", help="row-major string, . or 0 for blanks")
    s.add_argument("--checkpoint")
    s.add_argument("--device", default="auto")
    s.set_defaults(fn=cmd_solve)
    r = sub.add_parser("rate", help="solve and rate a puzzle file, write Sudoku-Extreme CSV")
    r.add_argument("--puzzles", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--limit", type=int)
    r.add_argument("--skip-bad", action="store_true")
    r.set_defaults(fn=cmd_rate)
    return p


def bench_main(argv: list[str] | None = None) -> int:
    """`python -m tdrm.bench trm|solver ...` (argument parsing lives here, the work in tdrm.bench)."""
    from . import bench

    ap = argparse.ArgumentParser(prog="python -m tdrm.bench", description=bench.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("trm", help="TRM training/inference throughput")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--profiles", default="default,paper")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--paper-steps", type=int, default=3, help="timed steps for the paper config")
    t.add_argument("--paper-batch", type=int, help="batch for the paper config (default: its 768)")
    t.add_argument("--device", default="auto")
    t.add_argument("--out")
    s = sub.add_parser("solver", help="exact solver over a whole puzzle file")
    s.add_argument("--file", default="../shared/data/sudoku/forum_hardest_11plus.csv")
    s.add_argument("--limit", type=int)
    s.add_argument("--workers", type=int, default=1, help="processes (per-puzzle times are per process)")
    s.add_argument("--out")
    a = vars(ap.parse_args(argv))
    return bench.run(a.pop("what"), **a)


def main(argv: list[str] | None = None) -> int:
    from .data.board import PuzzleError
    from .train.checkpoint import CheckpointError

    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (PuzzleError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"tdrm {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
