"""Durations, the one grammar recipes and policies write them in.

A number and a unit: ``500ms``, ``30s``, ``1.5s``, ``15m``, ``24h``, ``7d``, ``2w``.
Every duration is bounded
(:data:`MAX_SECONDS`, a hundred years, unless the caller says less), so what it becomes
(a ``timedelta``, a deadline) always fits.
"""

from __future__ import annotations

import math
import re

NUMBER = r"[0-9]+(?:\.[0-9]+)?"
DURATION_RE = re.compile(rf"({NUMBER})(ms|s|m|h|d|w)")
BARE_RE = re.compile(NUMBER)
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SECONDS = 100 * 365 * 86400  # a hundred years
EXAMPLES = "500ms, 30s, 15m, 24h, 7d or 2w"


def span(value: str, maximum: float = MAX_SECONDS, bare: bool = False) -> float:
    """A duration in seconds, at most ``maximum``; ``bare``: a number alone is seconds."""
    match = DURATION_RE.fullmatch(value)
    if match is not None:
        number, unit = match.group(1, 2)
    elif bare and BARE_RE.fullmatch(value):
        number, unit = value, "s"
    else:
        raise ValueError(f"{_shown(value)} is not a duration like {EXAMPLES}")
    total = float(number) * UNITS[unit]
    if total > maximum:
        raise ValueError(f"{_shown(value)} is longer than {describe(maximum)}, the longest allowed")
    return total


def seconds(value: str) -> int:
    """A duration in whole seconds (a part of a second counts as one), at most a hundred
    years: 30s, 15m, 24h, 7d, 2w."""
    return math.ceil(span(value))


def describe(total: float) -> str:
    """A bound in words: 'a day', '100 years', '90s'."""
    for size, one, many in ((365 * 86400, "a year", "years"), (86400, "a day", "days")):
        if total >= size and total % size == 0:
            count = int(total // size)
            return one if count == 1 else f"{count} {many}"
    return f"{total:g}s"


def _shown(value: str) -> str:
    return f"'{value}'" if len(value) <= 40 else f"'{value[:40]}...'"
