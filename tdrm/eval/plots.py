"""PNG figures of the evaluation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_by_steps_png(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Exact accuracy (with 95% CI band) against DDIM sampling steps, teacher as a line."""
    plt = _plt()
    s = [r["sampling_steps"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(s, [r["exact_accuracy"] for r in rows], "o-", label="TDRM")
    ax.fill_between(s, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.25)
    ax.axhline(rows[0]["teacher_exact_accuracy"], color="k", ls="--", label="teacher (TRM)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps (denoiser calls)")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def per_step_png(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Decode accuracy of each generated trajectory step against the teacher's, and cosine."""
    plt = _plt()
    k = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(k, [r["teacher_exact_accuracy"] for r in rows], "s--", color="k", label="teacher exact")
    ax.plot(k, [r["tdrm_exact_accuracy"] for r in rows], "o-", label="TDRM exact (decoded step k)")
    ax.plot(k, [r["cosine_to_teacher"] for r in rows], "^:", label="cosine(TDRM y_k, teacher y_k)")
    ax.set_xlabel("supervision step k")
    ax.set_xticks(k)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def rl_png(steps_rows: list[dict], history: list[dict], path: str | Path, title: str = "") -> None:
    """Two panels: exact accuracy against sampling steps before and after RL (95% CI bands), and
    the rollout reward / solve rate over RL steps."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    s = [r["sampling_steps"] for r in steps_rows]
    for name, label in (("before", "distilled"), ("after", "after RL")):
        a.plot(s, [r[f"{name}_exact_accuracy"] for r in steps_rows], "o-", label=label)
        a.fill_between(s, [r[f"{name}_ci_low"] for r in steps_rows], [r[f"{name}_ci_high"] for r in steps_rows],
                       alpha=0.25)
    a.set_xscale("log", base=2)
    a.set_xlabel("sampling steps (deterministic DDIM)")
    a.set_ylabel("exact accuracy (test)")
    a.set_ylim(0, 1.02)
    a.legend(loc="lower right")
    x = [h["step"] for h in history]
    b.plot(x, [h["reward_mean"] for h in history], label="reward mean")
    b.plot(x, [h["solve_rate"] for h in history], label="rollout solve rate")
    val = [(h["step"], h["val_exact"]) for h in history if "val_exact" in h]
    if val:
        b.plot(*zip(*val), "o--", label="val exact (eta 0)")
    b.set_xlabel("RL step")
    b.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
