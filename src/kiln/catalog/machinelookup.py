"""The machines' catalog rows on the clock, in plain SQL through kiln.catalog.lookup.

``kiln up`` reads every member's launch config before it starts any: through the Lookup
(sqlite3 on the embedded catalog) that takes no SQLAlchemy import, which alone cost a
fifth of a second before the first member could start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kiln.catalog.lookup import Lookup, iso

LIVE = """
SELECT name, config, created FROM machines WHERE removed IS NULL ORDER BY name, created
"""


@dataclass(frozen=True)
class Launch:
    config: dict[str, str]  # the plain values it was launched with (no secret's)
    created: str  # kiln's time format (kiln.times.second)


def live_launches(lookup: Lookup) -> dict[str, Launch]:
    """Each machine not removed, by name: the newest row's (a launch that lost its folder
    can leave two)."""
    return {
        str(name): Launch(dict(json.loads(config)), iso(created) or "")
        for name, config, created in lookup.rows(LIVE)
    }
