"""The versions ``kiln gc`` removed, as their ``removed`` events tell them: the rows are
gone, the events stay, and each names the channel rows that held the version (rows gc
keeps, with the image left out), so a channel's history can still say which it was.

Plain SQL through the lookup: ``kiln where`` and ``kiln channels`` ask it without loading
SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kiln.catalog.lookup import Lookup, iso, moment

REMOVED = "SELECT name, version, digest, at, detail FROM events WHERE kind = 'removed'"


@dataclass(frozen=True)
class Removed:
    ref: str
    digest: str
    at: datetime
    by: str

    def describe(self) -> str:
        """'web:2 (removed by gc)'."""
        return f"{self.ref} (removed by {self.by})"

    def to_json(self) -> dict[str, str | None]:
        return {"ref": self.ref, "digest": self.digest, "at": iso(self.at), "by": self.by}


@dataclass
class Gone:
    """Per channel row: the version gc removed that it held (``image``) or replaced
    (``previous``)."""

    image: dict[int, Removed] = field(default_factory=dict)
    previous: dict[int, Removed] = field(default_factory=dict)
    versions: list[Removed] = field(default_factory=list)


def _queries(names: Iterable[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    if names is None:
        yield REMOVED + " ORDER BY id", {}
        return
    wanted = sorted(set(names))
    for start in range(0, len(wanted), 500):
        params = {f"n{n}": value for n, value in enumerate(wanted[start : start + 500])}
        keys = ", ".join(":" + key for key in params)
        yield f"{REMOVED} AND name IN ({keys}) ORDER BY id", params


def gone(lookup: Lookup, names: Iterable[str] | None) -> Gone:
    """What gc removed of the image families ``names`` (None: of every family), by the
    channel rows that named it."""
    out = Gone()
    for sql, params in _queries(names):
        for name, version, digest, at, detail in lookup.rows(sql, **params):
            told = json.loads(detail or "{}")
            found = Removed(f"{name}:{version}", digest, moment(at), str(told.get("by") or "gc"))
            out.versions.append(found)
            for row in told.get("channel_rows") or []:
                out.image[int(row)] = found
            for row in told.get("replaced_rows") or []:
                out.previous[int(row)] = found
    return out
