"""What each DVC stage really imports, against what dvc.yaml declares (issue 12: an exact graph).

A `sitecustomize` on PYTHONPATH makes every stage script, when TDRM_IMPORT_LOG names a directory,
write the files of all modules it loaded at exit. `code_deps` maps that to the project's files
(tdrm/, kernels/, the stage script); `declared_code` expands a stage's `deps:` (a directory
stands for every .py file under it). `minimal_deps` writes a closure back as deps (a directory
where every .py file under it is used), which is how dvc.yaml's lists were made:

    python -m tests.dvc_graph LOG_DIR      # after a logged `dvc repro` of the tiny profile
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


def log_name(cmd: str) -> str:
    script = cmd.split()[1]
    return Path(script).stem + ("_control" if "--final-only" in cmd else "")


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


if __name__ == "__main__":
    import yaml
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        log = Path(sys.argv[1]) / f"{log_name(st['cmd'])}.json"
        if log.exists():
            print(name, minimal_deps(code_deps(log, st["cmd"].split()[1])))
