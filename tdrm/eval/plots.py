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
    if "board_agreement_with_teacher" in rows[0]:
        ax.plot(k, [r["board_agreement_with_teacher"] for r in rows], "x-.", label="TDRM board k = teacher's board k")
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


def trajectory_png(path_, out: str | Path, per_row: int = 8) -> tuple[int, int]:
    """One board per row of a `BoardPath` (tdrm.eval.trajectory): givens black, the model's digits
    coloured by its probability, wrong digits on a red cell with a red frame, boxes outlined.
    The figure has a fixed size (`figure_size`); returns its (width, height) in pixels."""
    from matplotlib import cm, colors

    from .trajectory import figure_size

    plt = _plt()
    n_panels = len(path_.boards)
    w, h, dpi = figure_size(n_panels, per_row)
    cols, rows = min(n_panels, per_row), -(-n_panels // per_row)
    fig = plt.figure(figsize=(w, h), dpi=dpi)
    cmap, norm = plt.get_cmap("plasma_r"), colors.Normalize(0.0, 1.0)
    n, sh = path_.shape.n, path_.shape
    errors = path_.errors()
    top = 1 - 0.45 / h
    for i in range(n_panels):
        band = (top - 0.75 / h) / rows  # the boards' rows share the height above the colour bar
        ax = fig.add_axes([(i % cols) / cols + 0.01, top - (i // cols + 1) * band + 0.02,
                           1 / cols - 0.02, band - 0.06])
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        board, conf, err = path_.boards[i], path_.confidence[i], errors[i]
        for c in range(n * n):
            r, col = divmod(c, n)
            if err[c]:
                ax.add_patch(plt.Rectangle((col, r), 1, 1, facecolor="#ffd0d0", edgecolor="red", lw=1.2))
            d = int(board[c])
            if path_.puzzle[c]:
                ax.text(col + 0.5, r + 0.55, str(int(path_.puzzle[c])), ha="center", va="center",
                        fontsize=9, color="black", fontweight="bold")
            elif d:
                ax.text(col + 0.5, r + 0.55, str(d), ha="center", va="center", fontsize=9, color=cmap(norm(conf[c])))
        for k in range(n + 1):
            ax.axhline(k, color="k", lw=1.4 if k % sh.r == 0 else 0.3)
            ax.axvline(k, color="k", lw=1.4 if k % sh.c == 0 else 0.3)
        title = path_.labels[i] + (f": {int(err.sum())} wrong" if path_.solution is not None else "")
        ax.set_title(title, fontsize=8, color="red" if err.any() else "black")
    fig.suptitle(path_.title + ("" if path_.solution is not None else " (puzzle has no solution: no errors marked)"),
                 fontsize=9, y=1 - 0.12 / h)
    cax = fig.add_axes([0.3, 0.42 / h, 0.4, 0.1 / h])
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal").set_label(
        "probability of the digit (givens in black, errors in red)", fontsize=7)
    cax.tick_params(labelsize=6)
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")  # no bbox_inches: the file has exactly the figure's size
    plt.close(fig)
    return round(w * dpi), round(h * dpi)


def curves_png(series: dict[str, dict[str, tuple[list, list]]], metrics: list[str], out: str | Path) -> tuple[int, int]:
    """Metric curves of several runs overlaid, one panel per metric (at most 3 per row).
    `series`: run label -> metric name -> (steps, values). 4.5 x 3.2 inches per panel, 100 dpi;
    returns (width, height) in pixels."""
    plt = _plt()
    if not metrics:
        raise ValueError("no metric to plot")
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // 3)
    w, h = 4.5 * cols, 3.2 * rows
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), dpi=100, squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for label, s in series.items():
            if m in s and s[m][1]:
                steps, vals = s[m]
                ax.plot(steps, vals, "-" if len(vals) > 12 else "o-", label=label, lw=1.2, ms=3)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return round(w * 100), round(h * 100)
