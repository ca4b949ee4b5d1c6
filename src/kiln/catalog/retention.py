"""The catalog's side of ``kiln gc``: the rows retention decides on, read in one go, and
the removal of the versions that go, in the caller's write transaction.

The rows are read as plain SQL: ten thousand rows read through the ORM's types cost
twice as much. The removal is ORM statements in chunks (a bound parameter list stays
small on both SQLite and PostgreSQL), without synchronising the session: nothing in it
holds the rows removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from kiln.catalog.db import Conflict
from kiln.catalog.freshness import Proof
from kiln.catalog.lifecycle import Assignment, Event, Revocation, Signature
from kiln.catalog.lookup import Lookup
from kiln.catalog.machines import Machine, TestRun
from kiln.catalog.models import Artefact, Image, Package
from kiln.catalog.revisions import OK

IMAGES = (
    "SELECT id, name, version, digest, parent_id, created, status, config_digest,"
    " recipe_path FROM images"
)
ASSIGNMENTS = "SELECT id, name, channel, image_id, at, previous_id, action FROM channel_assignments"
MACHINES = "SELECT id, name, image_id, stopped, removed FROM machines"
DIGESTS = "SELECT id, digest FROM images"

Rows = Sequence[Sequence[Any]]
QUIET = {"synchronize_session": False}


def chunks(ids: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def snapshot(session: Session) -> tuple[Rows, Rows, Rows]:
    """Every image (id, name, version, digest, parent_id, created, status, config_digest,
    recipe_path), every channel assignment (id, name, channel, image_id, at, previous_id,
    action) and every machine row (id, name, image_id, stopped, removed)."""
    images, assignments, machines = (
        session.execute(text(sql)).all() for sql in (IMAGES, ASSIGNMENTS, MACHINES)
    )
    return images, assignments, machines


def image_digests(lookup: Lookup) -> Rows:
    """(id, digest) of every image row, pending ones too."""
    return lookup.rows(DIGESTS)


def remove_versions(
    session: Session,
    images: Sequence[int],
    history: Sequence[int],
    replaced: Sequence[int],
    machines: Sequence[int],
) -> None:
    """Remove the image rows ``images`` and all that hangs on them: the channel rows
    ``history`` keep their place with the image left out, those in ``replaced`` forget the
    image they replaced, the (removed) machine rows ``machines`` go, and so do packages,
    artefacts, test runs, signatures, revocations and rebuild proofs. An image that is no
    longer a finished row (a rival changed it) raises Conflict: the caller's transaction
    then removes nothing."""
    ids = sorted(images)
    for chunk in chunks(history):
        session.execute(
            update(Assignment).where(Assignment.id.in_(chunk)).values(image_id=None),
            execution_options=QUIET,
        )
    for chunk in chunks(replaced):
        session.execute(
            update(Assignment).where(Assignment.id.in_(chunk)).values(previous_id=None),
            execution_options=QUIET,
        )
    for chunk in chunks(machines):
        session.execute(delete(Machine).where(Machine.id.in_(chunk)), execution_options=QUIET)
    for table in (Package, Artefact, TestRun, Signature, Revocation, Proof):
        for chunk in chunks(ids):
            session.execute(delete(table).where(table.image_id.in_(chunk)), execution_options=QUIET)
    for chunk in chunks(ids):  # a parent and its child may go in different chunks
        session.execute(
            update(Image).where(Image.id.in_(chunk)).values(parent_id=None),
            execution_options=QUIET,
        )
    for chunk in chunks(ids):
        done = session.execute(
            delete(Image).where(Image.id.in_(chunk), Image.status == OK),
            execution_options=QUIET,
        )
        if done.rowcount != len(chunk):  # type: ignore[attr-defined]
            raise Conflict(
                "an image version gc was removing changed under it",
                hint="another kiln process changed the catalog; run kiln gc again",
            )


def removed_earlier(session: Session, digests: Iterable[str]) -> set[tuple[str, int | None, str]]:
    """(name, version, digest) of each version with one of ``digests`` that a "removed"
    event says gc took."""
    rows = session.execute(
        select(Event.name, Event.version, Event.digest).where(
            Event.kind == "removed", Event.digest.in_(set(digests))
        )
    ).all()
    return {(name, version, digest) for name, version, digest in rows}


def package_digests(session: Session, image_ids: Sequence[int]) -> set[str]:
    """The sha256 of every cached package file the images ``image_ids`` hold."""
    needed: set[str] = set()
    for chunk in chunks(image_ids):
        needed |= set(
            session.scalars(
                select(Package.sha256)
                .where(Package.image_id.in_(chunk), Package.sha256 != "")
                .distinct()
            )
        )
    return needed
