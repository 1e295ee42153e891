"""The library boundary of STYLE.md: tdrm/ never imports sacred, dvc or argparse outside
tdrm/tracking/ and tdrm/cli.py; stage scripts stay thin."""
import ast

from .conftest import ROOT

FORBIDDEN = {"sacred", "dvc", "argparse"}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_library_boundary():
    bad = []
    for path in (ROOT / "tdrm").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("tdrm/tracking/") or rel == "tdrm/cli.py":
            continue
        bad += [f"{rel}: {m}" for m in _imports(path) if m in FORBIDDEN]
    assert not bad


def test_stage_scripts_are_thin():
    for path in (ROOT / "stages").glob("*.py"):
        lines = [l for l in path.read_text().splitlines() if l.strip()]
        assert len(lines) <= 15, path
        assert not any(ch.isdigit() for l in lines if "argv" not in l for ch in l.split("#")[0]), path
