"""A name's versions: the newest one not revoked (what a bare name means, answered here
for the resolver, kiln where and kiln outdated alike); and by their bytes: which versions
hold one manifest digest, and whether any of them is revoked.

A bake whose result is the bytes of an existing version (a cache hit on an older version,
or a ``--no-cache`` rebuild that reproduced one) asks these questions before it makes
those bytes the name's newest version again (kiln.bake.again).
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable

from kiln.catalog.lookup import COLUMNS, ImageRow, Lookup, RevocationRow
from kiln.catalog.revisions import OK

# Every finished version's id and name, each name's newest first.
NEWEST = "SELECT id, name FROM images WHERE status = :ok{only} ORDER BY name, version DESC"


def first_usable(versions: Iterable[tuple[int, str]], revoked: Container[int]) -> dict[str, int]:
    """The newest version not revoked of each name: the first of ``versions`` ((id, name),
    each name's newest first) that is not in ``revoked``, by name."""
    out: dict[str, int] = {}
    for image_id, name in versions:
        if name not in out and image_id not in revoked:
            out[name] = image_id
    return out


def newest_usable(
    lookup: Lookup, names: Collection[str] | None, revoked: Container[int] | None = None
) -> dict[str, int]:
    """The newest version not revoked of each name (of ``names``; None: every name), by
    image id, in name order; a name whose every version is revoked is left out.
    ``revoked``: the images revoked at the time asked about, when the caller has read
    them (else those revoked now)."""
    if revoked is None:
        revoked = lookup.revoked_images()
    only, params = "", {"ok": OK}
    if names is not None and len(names) == 1:
        only, params["name"] = " AND name = :name", next(iter(names))
    found = lookup.rows(NEWEST.format(only=only), **params)
    return first_usable(
        ((row[0], row[1]) for row in found if names is None or row[1] in names), revoked
    )


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
