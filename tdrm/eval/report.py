"""One self-contained HTML page of everything measured (`tdrm report`, written by the evaluate stage):
the metrics of every stage (metrics/*.json), the Sacred runs grouped by stage with their DVC
experiment names, parameter differences and final metrics, the training and accuracy curves
(plots/*.csv drawn here; plots/*.png embedded) and pictures of a puzzle along the trajectories.

Offline by construction: PNGs are embedded as data: URIs, there is no script and no stylesheet or
font from elsewhere (`dvc plots show` needs a CDN, unreachable on these machines).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from ..tracking.store import flatten, varying_keys
from .plots import curves_png

CSS = """body{font-family:sans-serif;margin:2em;max-width:75em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}h2{border-bottom:1px solid #ccc;margin-top:2em}
.muted{color:#777;font-size:.85em}"""

HEADLINE = ("exact_accuracy", "test_exact", "after_exact", "val_exact", "solve_rate", "mse", "lm_loss", "seconds", "minutes")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        s = json.dumps(v, default=str)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


def _cell(v) -> str:
    cls = ' class="n"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{html.escape(_fmt(v))}</td>"


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img(png: bytes | str | Path, caption: str) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{caption}: not a PNG image")
    b64 = base64.b64encode(data).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption class=\"muted\">{html.escape(caption)}</figcaption></figure>")


def read_csv_series(path: str | Path) -> tuple[str, dict[str, tuple[list, list]]]:
    """A plots CSV -> (x column, {column: (xs, ys)}) over its numeric cells; x is `step`,
    `sampling_steps` or the first column."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return "", {}
    cols = list(rows[0])
    x = next((c for c in ("step", "sampling_steps") if c in cols), cols[0])
    out = {}
    for c in cols:
        if c == x:
            continue
        xs, ys = [], []
        for r in rows:
            try:
                xv, yv = float(r[x]), float(r[c])
            except (TypeError, ValueError):
                continue
            xs.append(xv)
            ys.append(yv)
        if ys:
            out[c] = (xs, ys)
    return x, out


def _png_bytes(draw) -> bytes:
    buf = io.BytesIO()
    draw(buf)
    return buf.getvalue()


def metrics_section(metrics_dir: Path) -> str:
    parts = []
    for p in sorted(metrics_dir.glob("*.json")):
        detail = metrics_dir / "details" / p.name  # everything the stage measured, when it split it off
        p = detail if detail.is_file() else p
        try:
            flat = flatten(json.loads(p.read_text()))
        except json.JSONDecodeError:
            parts.append(f"<h3>{html.escape(p.name)}</h3><p>unreadable JSON</p>")
            continue
        rows = [[k, v] for k, v in flat.items() if not (isinstance(v, list) and len(json.dumps(v, default=str)) > 400)]
        parts.append(f"<h3>{html.escape(p.stem)}</h3>" + table(["metric", "value"], rows))
    return "".join(parts) or "<p>No metrics files yet (run <code>dvc repro</code>).</p>"


def runs_section(records: list[dict]) -> str:
    """Sacred runs by stage: status, DVC experiment, commit, the params that differ between the
    stage's runs and its headline metrics."""
    if not records:
        return "<p>No Sacred runs recorded.</p>"
    parts = []
    for stage in sorted({r["stage"] for r in records}):
        rs = [r for r in records if r["stage"] == stage]
        keys = [k for k in varying_keys(rs) if k != "seed"][:6] if len(rs) > 1 else []
        mkeys = sorted({k for r in rs for k in r["metrics"] if any(h in k for h in HEADLINE)
                        and "ci" not in k})[:6]
        header = ["run", "status", "start", "min", "dvc exp", "commit"] + keys + mkeys
        rows = [[r["id"], r["status"], r["start"] or "", round(r["duration_s"] / 60, 1) if r["duration_s"] else "",
                 r["dvc_exp"] or "", (r["git_commit"] or "")[:8]] + [r["params"].get(k, "") for k in keys]
                + [r["metrics"].get(k, "") for k in mkeys] for r in rs]
        parts.append(f"<h3>{html.escape(stage)} ({len(rs)} runs)</h3>" + table(header, rows))
    return "".join(parts)


def curves_section(plots_dir: Path) -> str:
    parts = []
    for p in sorted(plots_dir.glob("*.csv")):
        x, series = read_csv_series(p)
        names = [n for n in series if not n.startswith("ci_") and "_ci_" not in n][:6]
        if not names:
            continue
        png = _png_bytes(lambda buf: curves_png({p.stem: {n: series[n] for n in names}}, names, buf))
        parts.append(img(png, f"{p.name}: {', '.join(names)} against {x}"))
    for p in sorted(plots_dir.glob("*.png")):
        parts.append(img(p, p.name))
    return "".join(parts) or "<p>No plots yet.</p>"


def build_html(*, metrics_dir: str | Path = "metrics", plots_dir: str | Path = "plots",
               records: list[dict] | None = None, pictures: list[tuple[bytes | str | Path, str]] = (),
               title: str = "TDRM report", note: str = "") -> str:
    body = [f"<h1>{html.escape(title)}</h1><p class=\"muted\">{html.escape(note)}</p>",
            "<h2>Metrics of every stage</h2>", metrics_section(Path(metrics_dir)),
            "<h2>Runs and experiments</h2>", runs_section(records or []),
            "<h2>Curves</h2>", curves_section(Path(plots_dir)),
            "<h2>Trajectories</h2>", "".join(img(p, c) for p, c in pictures) or "<p>No trajectory pictures.</p>"]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def write_report(out: str | Path, **kw) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_html(**kw), encoding="utf-8")
    return out
