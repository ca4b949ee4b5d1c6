"""The revocations on record beyond what the resolver asks (kiln.catalog.lookup enforces
them): every one not restored, and the one ``kiln restore NAME`` lifts. Plain SQL through
the lookup.
"""

from __future__ import annotations

from kiln.catalog.lookup import REVOCATIONS, Lookup, RevocationRow

LAST_OF_NAME = (
    "SELECT r.image_id FROM revocations r JOIN images i ON i.id = r.image_id"
    " WHERE i.name = :name AND r.restored IS NULL ORDER BY r.created DESC, r.id DESC LIMIT 1"
)


def unrestored(lookup: Lookup) -> list[RevocationRow]:
    """Every revocation not restored, in force or scheduled, oldest first."""
    return [RevocationRow.of(row) for row in lookup.rows(REVOCATIONS)]


def last_revoked_of(lookup: Lookup, name: str) -> int | None:
    """The image the newest unrestored revocation of a version of ``name`` was made on."""
    found = lookup.rows(LAST_OF_NAME, name=name)
    return int(found[0][0]) if found else None
