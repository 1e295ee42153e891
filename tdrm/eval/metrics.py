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
