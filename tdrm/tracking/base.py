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


class MemoryTracker(Tracker):
    """Keeps logged scalars in memory (tests)."""

    def __init__(self):
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def log_scalar(self, name, value, step):
        self.scalars.setdefault(name, []).append((step, float(value)))
