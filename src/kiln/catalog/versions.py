"""A name's versions by their bytes: which versions hold one manifest digest, and whether
any of them is revoked.

A bake whose result is the bytes of an existing version (a cache hit on an older version,
or a ``--no-cache`` rebuild that reproduced one) asks these questions before it makes
those bytes the name's newest version again (kiln.bake.again).
"""

from __future__ import annotations

from kiln.catalog.lookup import COLUMNS, ImageRow, Lookup, RevocationRow
from kiln.catalog.revisions import OK


def holding(lookup: Lookup, name: str, digest: str) -> list[ImageRow]:
    """The finished versions of ``name`` whose manifest is ``digest``, newest first."""
    rows = lookup.rows(
        f"SELECT {COLUMNS} FROM images WHERE name = :name AND digest = :digest"
        " AND status = :ok ORDER BY version DESC",
        name=name,
        digest=digest,
        ok=OK,
    )
    return [ImageRow(*row) for row in rows]


def revoked_holder(lookup: Lookup, name: str, digest: str) -> tuple[ImageRow, RevocationRow] | None:
    """A version of ``name`` holding ``digest`` that is revoked now (itself or through an
    ancestor), with the revocation in force; None when no holder is."""
    for row in holding(lookup, name, digest):
        revocation = lookup.revocation(row.id)
        if revocation is not None:
            return row, revocation
    return None
