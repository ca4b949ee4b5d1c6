"""Durations as policies write them: a whole number and a unit (30s, 15m, 24h, 7d, 2w)."""

from __future__ import annotations

import re

DURATION_RE = re.compile(r"^([0-9]+)(s|m|h|d|w)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds(value: str) -> int:
    """A duration as a policy writes it: 30s, 15m, 24h, 7d, 2w."""
    match = DURATION_RE.match(value)
    if not match:
        raise ValueError(f"'{value}' is not a duration like 30s, 15m, 24h, 7d or 2w")
    return int(match.group(1)) * UNITS[match.group(2)]
