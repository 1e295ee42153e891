"""Where the project is, also inside DVC's temporary experiment workspaces."""
from __future__ import annotations

from pathlib import Path


def project_root(cwd: Path | None = None) -> Path:
    """The repository root: `cwd`, or the repo that holds `.dvc/tmp/exps/<workspace>` when DVC runs
    an experiment with `--temp` or from its queue."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def resolve_input(path: str | Path) -> Path:
    """An input path as given, or, if it does not exist from here, relative to the project root
    (so `../shared/...` in params.yaml also works from a DVC temp workspace)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    alt = project_root() / p
    return alt if alt.exists() else p
