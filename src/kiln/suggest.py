"""Did you mean ...?: the nearest known word to a mistyped one, as kubectl and git say it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's ratio: 'prdo' -> 'prod' is 0.75, 'qa' -> 'prod' is 0


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known word nearest to ``word``, or None when none is near enough."""
    found = difflib.get_close_matches(word, sorted(set(known)), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean prod?)' for a near miss, else '': ready to end a message with."""
    match = closest(word, known)
    return f" (did you mean {match}?)" if match is not None and match != word else ""
