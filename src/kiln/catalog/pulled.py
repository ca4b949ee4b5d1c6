"""The catalog's half of ``kiln pull``: a pulled image's row, taken pending and confirmed
once the store has tagged it (as a bake's is), or the note that this store now holds an
image the catalog knew (kiln push records its registry copies in kiln.catalog.ledger).

A pulled image keeps the version it has where it came from when that number was never
handed out here (the ``image_names`` counter is below it); otherwise it takes the next
one, since a number is never given twice (kiln.catalog.db.next_version).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from kiln.catalog import events, holdings
from kiln.catalog.baking import NewVersion
from kiln.catalog.db import Catalog, Conflict
from kiln.catalog.holdings import Holder
from kiln.catalog.lifecycle import ImageName
from kiln.catalog.models import Image


def ready(catalog: Catalog) -> None:
    """Open the catalog's connection now (a pull does it while skopeo copies)."""
    with catalog.session():
        pass


def take(catalog: Catalog, new: NewVersion, wanted: int, holder: Holder) -> tuple[int, int]:
    """A pending row for a pulled image, at version ``wanted`` when it was never taken
    here; returns its id and version."""
    with catalog.session() as session:
        counter = session.scalar(select(ImageName).where(ImageName.name == new.name))
        if counter is None:
            session.add(ImageName(name=new.name, last_version=wanted))
            version = wanted
        elif counter.last_version < wanted:
            counter.last_version = wanted
            version = wanted
        else:
            version = catalog.next_version(session, new.name)
        row = new.row(version)
        session.add(row)
        session.flush()
        holder.register(session)
        holdings.hold(session, row.id, holder.store_id)
        return row.id, row.version


def held_here(catalog: Catalog, image_id: int, ref: str, holder: Holder, **detail: Any) -> None:
    """An image the catalog knew now has its bytes in ``holder``'s store too."""
    with catalog.session() as session:
        row = session.get(Image, image_id)
        if row is None:
            raise Conflict(f"{ref} left the catalog while it was being pulled", hint="pull again")
        holder.register(session)
        holdings.hold(session, image_id, holder.store_id)
        events.record(session, "pulled", row.name, row.version, row.digest, **detail)
