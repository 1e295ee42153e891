"""The small tracking interface the library talks to; Sacred lives behind it (tracking/sacred_run.py)."""
from __future__ import annotations


class Tracker:
    """Null tracker: accepts metrics and artifacts and drops them."""

    run_id: str | None = None

    def log_scalar(self, name: str, value: float, step: int) -> None:
        pass

    def add_artifact(self, path: str, name: str | None = None) -> None:
        pass

    def info(self, key: str, value) -> None:
        pass

    def log_row(self, prefix: str, row: dict) -> None:
        """Every entry of a history row but `step`, as `prefix.name` at that step."""
        for name, v in row.items():
            if name != "step":
                self.log_scalar(f"{prefix}.{name}", v, row["step"])


class MemoryTracker(Tracker):
    """Keeps logged scalars in memory (tests)."""

    def __init__(self):
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def log_scalar(self, name, value, step):
        self.scalars.setdefault(name, []).append((step, float(value)))


def mask_url(url: str) -> str:
    """`url` with any password replaced by *** (scheme://user:***@host/...): what messages, run
    records and the report may show of a database URL."""
    from urllib.parse import urlsplit, urlunsplit
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    creds, host = parts.netloc.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with the URL and its password, wherever they appear, masked."""
    from urllib.parse import unquote, urlsplit
    text = text.replace(url, mask_url(url))
    try:
        pw = urlsplit(url).password
    except ValueError:
        pw = None
    for secret in {pw, unquote(pw)} if pw else ():
        text = text.replace(secret, "***")
    return text
