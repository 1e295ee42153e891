"""What each DVC stage really imports, against what dvc.yaml declares (issue 12: an exact graph).

A `sitecustomize` on PYTHONPATH makes every stage script, when TDRM_IMPORT_LOG names a directory,
write the files of all modules it loaded at exit. `code_deps` maps that to the project's files
(tdrm/, kernels/, the stage script); `declared_code` expands a stage's `deps:` (a directory
stands for every .py file under it). `minimal_deps` writes a closure back as deps (a directory
where every .py file under it is used), which is how dvc.yaml's lists were made:

    python -m tests.dvc_graph LOG_DIR      # rewrite dvc.yaml's code deps from a logged tiny `dvc repro`
                                           # (the import logs tests/test_dvc_s3.py leaves in its tmp dir)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("tdrm", "kernels")

SITECUSTOMIZE = '''import atexit, os, sys
_log = os.environ.get("TDRM_IMPORT_LOG")
if _log and sys.argv and sys.argv[0].endswith(".py") and \\
        os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0]))) == "stages":
    def _dump():
        import json, pathlib
        mods = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
        name = pathlib.Path(sys.argv[0]).stem + ("_control" if "--final-only" in sys.argv else "")
        pathlib.Path(_log, name + ".json").write_text(json.dumps([os.path.abspath(m) for m in mods]))
    atexit.register(_dump)
'''


def script_of(cmd: str) -> str:
    """The stage script of a dvc.yaml command (`python stages/x.py ...` or `torchrun ... stages/x.py ...`)."""
    return next(w for w in cmd.split() if w.endswith(".py"))


def log_name(cmd: str) -> str:
    return Path(script_of(cmd)).stem + ("_control" if "--final-only" in cmd else "")


def code_deps(log: Path, script: str, roots=(ROOT,)) -> set[str]:
    """Project files a stage loaded: tdrm/ and kernels/ modules under any of `roots`, and its script."""
    out = {script}
    for m in json.loads(Path(log).read_text()):
        p = Path(m).resolve()
        for r in roots:
            r = Path(r).resolve()
            if p.is_relative_to(r) and p.relative_to(r).parts[0] in CODE:
                out.add(p.relative_to(r).as_posix())
    return out


def declared_code(deps: list[str], root: Path = ROOT) -> set[str]:
    out = set()
    for d in deps:
        top = d.split("/")[0]
        if top in CODE and (root / d).is_dir():
            out |= {p.relative_to(root).as_posix() for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts}
        elif d.endswith(".py"):
            out.add(d)
    return out


def minimal_deps(files: set[str], root: Path = ROOT) -> list[str]:
    """Directories whose every .py file is used, else the files; the stage script first."""
    chosen, left = [], set(files)
    dirs = sorted({Path(f).parent.as_posix() for f in files if Path(f).parts[0] in CODE}, key=lambda d: d.count("/"))
    for d in dirs:
        if any(d.startswith(c + "/") for c in chosen):
            continue
        every = {p.relative_to(root).as_posix() for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts}
        if every and every <= files and d not in CODE:
            chosen.append(d)
            left -= every
    return sorted(f for f in left if f.startswith("stages/")) + sorted(chosen + [f for f in left if not f.startswith("stages/")])


def rewrite_deps(logs: Path, path: Path = ROOT / "dvc.yaml") -> None:
    """Replace every stage's code deps in dvc.yaml by its logged closure (data deps, order of stages,
    params, outs and comments kept): stage script, data and model deps, then code."""
    import re

    import yaml
    stages = yaml.safe_load(path.read_text())["stages"]
    lines, out, cur, i = path.read_text().split("\n"), [], None, 0
    while i < len(lines):
        ln = lines[i]
        m = re.match(r"^  (\w+):", ln)
        if m:
            cur = m.group(1)
        if ln.startswith("    deps:") and cur in stages:
            st = stages[cur]
            code = minimal_deps(code_deps(Path(logs) / f"{log_name(st['cmd'])}.json", script_of(st["cmd"])))
            data = [d for d in st["deps"] if d.split("/")[0] not in (*CODE, "stages")]
            out.append("    deps:")
            out += [f"      - {d}" for d in [c for c in code if c.startswith("stages/")] + data
                    + [c for c in code if not c.startswith("stages/")]]
            i += 1
            while i < len(lines) and lines[i].startswith("      - "):
                i += 1
            continue
        out.append(ln)
        i += 1
    path.write_text("\n".join(out))


if __name__ == "__main__":
    rewrite_deps(Path(sys.argv[1]))
