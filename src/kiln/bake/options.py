"""How a bake was asked for: the command line's choices, the same for every recipe."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    no_cache: bool = False
    keep_on_error: bool = False
    mirror: str | None = None
    ignore_lock: bool = False  # resolve afresh against the mirror (kiln lock)
