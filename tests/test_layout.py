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


def test_each_stage_depends_on_its_sections_in_every_profile_only():
    """A stage's DVC params are its sections, plus those sections' entries in every profile; never
    the whole `profiles` block (an edit to one profile's distill entry must not re-run the teacher)."""
    import yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    from tdrm.config import LAUNCH_ONLY
    sections = [k for k in params if k not in ("profile", "profiles", *LAUNCH_ONLY)]  # dist: top level only
    for name, prof in params["profiles"].items():
        assert sorted(prof) == sorted(sections), f"profile {name} must name every section ({{}} when unchanged)"
    for stage, spec in stages.items():
        keys = spec.get("params", [])
        assert "profiles" not in keys, stage
        if not keys:
            continue
        own = [k for k in keys if k in sections]
        assert "profile" in keys and "common" in own, stage
        expected = {f"profiles.{p}.{s}" for p in params["profiles"] for s in own}
        if stage == "rl":  # the RL stage's evaluation uses evaluate.batch_size
            expected |= {f"profiles.{p}.evaluate" for p in params["profiles"]}
        assert {k for k in keys if k.startswith("profiles.")} == expected, stage


def test_kernels_do_not_import_the_library():
    """kernels/ is below tdrm/: the model-level benchmark rows live in tdrm/bench/kernels.py."""
    bad = [f"{p.name}: {m}" for p in sorted((ROOT / "kernels").glob("*.py")) for m in _imports(p) if m == "tdrm"]
    assert not bad, bad
