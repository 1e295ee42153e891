"""Pure metric helpers."""
from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rating_bucket(r: int) -> str:
    """Buckets of the guess-count rating: 0, 1-3, 4-15, 16-63, 64-255, 256+ (unknown: -1)."""
    if r < 0:
        return "unknown"
    if r == 0:
        return "0"
    for lo, hi in ((1, 3), (4, 15), (16, 63), (64, 255)):
        if r <= hi:
            return f"{lo}-{hi}"
    return "256+"


def mcnemar_exact(a: list[bool], b: list[bool]) -> dict:
    """Paired comparison of two solvers on the same puzzles: exact two-sided McNemar test.

    Under H0 the discordant pairs split evenly, so the count where only `a` is right is
    Binomial(n01 + n10, 1/2); p = min(1, 2 * P[X <= min(n01, n10)])."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_first": only_a, "only_second": only_b, "p_value": min(1.0, 2 * tail)}
