"""The catalog's half of a bake's commit: a version taken by a pending row, then confirmed
with its artefacts and its ``baked`` event, or taken back.

A bake writes its bytes, takes a version (the pending row, never shown as an image), tags
the store and then confirms the row; a bake killed in between leaves a pending row that
``kiln gc`` removes with its tag. The row is held by the bake's store from the moment it
is taken (kiln.catalog.holdings), so the gc of another store sharing the catalog knows
the pending row is not its own. A first build and a bake that lands on an older
version's bytes (kiln.bake.again) commit through these same three calls.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.catalog import events, holdings
from kiln.catalog.db import Catalog, Conflict
from kiln.catalog.holdings import Holder
from kiln.catalog.models import Artefact, Image, Package
from kiln.catalog.revisions import PENDING

ALLOCATE_ATTEMPTS = 20

PackageFields = tuple[str, str, str, str]  # name, version, architecture, sha256
ArtefactFields = tuple[str, str, str, str]  # kind, media type, manifest digest, blob digest


@dataclass(frozen=True)
class NewVersion:
    """The row a bake's image becomes, before its number is known."""

    name: str
    digest: str
    config_digest: str
    parent_id: int | None
    cache_key: str
    recipe_path: str
    recipe_digest: str
    origin: str
    created: datetime
    size: int
    seconds: float
    packages: Sequence[PackageFields]

    def row(self, version: int) -> Image:
        return Image(
            name=self.name,
            version=version,
            digest=self.digest,
            config_digest=self.config_digest,
            parent_id=self.parent_id,
            cache_key=self.cache_key,
            recipe_path=self.recipe_path,
            recipe_digest=self.recipe_digest,
            origin=self.origin,
            created=self.created,
            status=PENDING,
            size=self.size,
            seconds=self.seconds,
            packages=[
                Package(name=n, version=v, architecture=a, sha256=s) for n, v, a, s in self.packages
            ],
        )


@dataclass(frozen=True)
class Copied:
    """What a new version holding an existing version's bytes takes over from it."""

    packages: list[PackageFields]
    artefacts: list[ArtefactFields]
    origin: str
    size: int
    seconds: float


def take_version(catalog: Catalog, new: NewVersion, holder: Holder | None) -> tuple[int, int]:
    """Take the next version of ``new.name`` with a pending row held by ``holder`` (the
    bake's store; None: by no store, as rows baked before holdings were); return its id
    and version.

    On SQLite the write transaction is serialised; on PostgreSQL two bakes can pick the
    same number, and the unique (name, version) constraint makes the later one try again.
    """
    for attempt in range(ALLOCATE_ATTEMPTS):
        try:
            with catalog.session() as session:
                row = new.row(catalog.next_version(session, new.name))
                session.add(row)
                session.flush()
                if holder is not None:
                    holder.register(session)
                    holdings.hold(session, row.id, holder.store_id)
                return row.id, row.version
        except Conflict:
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise Conflict(
        f"someone else got there first: every version of {new.name} tried was taken "
        f"by another bake ({ALLOCATE_ATTEMPTS} attempts)",
        hint="bake again",
    )


def confirm(
    catalog: Catalog,
    image_id: int,
    ref: str,
    artefacts: Sequence[ArtefactFields],
    kind: str = "baked",
    **event: Any,
) -> None:
    """Mark the pending row ``image_id`` (``ref``) ok with its artefacts, and record the
    event ``kind`` (``baked``; ``pulled`` for kiln pull) with ``event`` as its detail, in
    one transaction. Conflict if the row is gone or no longer pending (a gc of another
    store sharing this catalog)."""
    with catalog.session() as session:
        done = session.get(Image, image_id)
        if done is None or done.status != PENDING:
            again = "pull" if kind == "pulled" else "bake"
            raise Conflict(
                f"{ref} was removed from the catalog while it was being {kind}",
                hint=f"was 'kiln gc' run against another store sharing this catalog? {again} again",
            )
        done.artefacts = [
            Artefact(kind=k, media_type=m, manifest_digest=md, digest=d)
            for k, m, md, d in artefacts
        ]
        done.status = "ok"
        events.record(session, kind, done.name, done.version, done.digest, **event)


def take_back(catalog: Catalog, image_id: int) -> None:
    """Remove the pending row of a commit that did not finish, with its holdings (a
    confirmed row stays)."""
    with catalog.session() as session:
        pending = session.get(Image, image_id)
        if pending is not None and pending.status == PENDING:
            session.delete(pending)


def copied(catalog: Catalog, image_id: int, ref: str) -> Copied:
    """The packages, artefacts and build figures of image ``image_id`` (``ref``)."""
    with catalog.session() as session:
        source = session.get(Image, image_id)
        if source is None:
            raise Conflict(f"{ref} left the catalog while it was being baked again")
        return Copied(
            packages=[(p.name, p.version, p.architecture, p.sha256) for p in source.packages],
            artefacts=[
                (a.kind, a.media_type, a.manifest_digest, a.digest) for a in source.artefacts
            ],
            origin=source.origin,
            size=source.size,
            seconds=source.seconds,
        )
