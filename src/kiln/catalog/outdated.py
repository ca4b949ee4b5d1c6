"""What ``kiln outdated`` reads on a warm run: the packages images hold and every first
sighting of a newer version kiln recorded. Plain SQL through the lookup, so a run with
nothing new to record never loads SQLAlchemy (the sightings are written by
kiln.catalog.freshness.record_sightings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln.catalog.lookup import Lookup

PACKAGES = "SELECT image_id, name, architecture, version FROM packages WHERE image_id IN ({ids})"
SIGHTINGS = "SELECT package, architecture, version, suite, first_seen FROM update_sightings"


def package_versions(lookup: Lookup, ids: Sequence[int]) -> dict[int, list[tuple[str, str, str]]]:
    """(name, architecture, version) of every package each of the images ``ids`` holds."""
    out: dict[int, list[tuple[str, str, str]]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        params = {f"i{n}": value for n, value in enumerate(chunk)}
        sql = PACKAGES.format(ids=", ".join(":" + k for k in params))
        for image_id, name, arch, version in lookup.rows(sql, **params):
            out[image_id].append((name, arch, version))
    return out


def sightings(lookup: Lookup) -> Sequence[Sequence[Any]]:
    """Every first sighting: (package, architecture, version, suite, first_seen)."""
    return lookup.rows(SIGHTINGS)
