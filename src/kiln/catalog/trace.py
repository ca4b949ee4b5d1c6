"""What ``kiln where``, ``kiln history``, ``kiln inspect`` and ``kiln lineage`` read about
images' lives: the machines on record, which images are signed, when images were made,
a family's versions and events, the names the catalog knows.

Plain SQL through the lookup, so none of these commands loads SQLAlchemy to read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kiln.catalog.lookup import Lookup, moment
from kiln.catalog.revisions import OK

MACHINES = (
    "SELECT name, image_id, image_ref, digest, folder, created, stopped, throwaway"
    " FROM machines WHERE removed IS NULL ORDER BY name, created"
)
EVENTS = (
    "SELECT id, at, kind, name, version, digest, machine, actor, detail FROM events"
    " WHERE name = :name ORDER BY at, id"
)
BAKED = (
    "SELECT detail FROM events WHERE kind = 'baked' AND name = :name AND digest = :digest"
    " ORDER BY id DESC LIMIT 1"
)


def machines(lookup: Lookup) -> Sequence[Sequence[Any]]:
    """Every machine not removed, by name and creation: (name, image_id, image_ref, digest,
    folder, created, stopped, throwaway)."""
    return lookup.rows(MACHINES)


def signed(lookup: Lookup) -> set[int]:
    """The images with at least one signature on record."""
    return {row[0] for row in lookup.rows("SELECT DISTINCT image_id FROM signatures")}


def created(lookup: Lookup, ids: Sequence[int]) -> dict[int, datetime]:
    """When each of the images ``ids`` was made, by id (a missing id is left out)."""
    out: dict[int, datetime] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        params = {f"i{n}": value for n, value in enumerate(chunk)}
        sql = f"SELECT id, created FROM images WHERE id IN ({', '.join(':' + k for k in params)})"
        out.update((row[0], moment(row[1])) for row in lookup.rows(sql, **params))
    return out


def family(lookup: Lookup, name: str) -> list[int]:
    """The ids of every finished version of ``name``."""
    sql = "SELECT id FROM images WHERE name = :name AND status = :ok"
    return [row[0] for row in lookup.rows(sql, name=name, ok=OK)]


def names(lookup: Lookup, finished: bool = False) -> list[str]:
    """Every image name the catalog has a row of (``finished``: a finished one), sorted."""
    sql = "SELECT DISTINCT name FROM images" + (" WHERE status = :ok" if finished else "")
    return sorted(row[0] for row in lookup.rows(sql, **({"ok": OK} if finished else {})))


def is_known(lookup: Lookup, name: str) -> bool:
    """Whether ``name`` has an image row or a channel row (its versions may be gone)."""
    return any(
        lookup.rows(f"SELECT 1 FROM {table} WHERE name = :name LIMIT 1", name=name)
        for table in ("images", "channel_assignments")
    )


def events(lookup: Lookup, name: str) -> Sequence[Sequence[Any]]:
    """Every event of the family ``name``, oldest first: (id, at, kind, name, version,
    digest, machine, actor, detail)."""
    return lookup.rows(EVENTS, name=name)


def baked_detail(lookup: Lookup, name: str, digest: str) -> dict[str, Any]:
    """The detail of the newest "baked" event of ``name`` with ``digest`` ({} if none)."""
    found = lookup.rows(BAKED, name=name, digest=digest)
    return dict(json.loads(found[0][0])) if found else {}
