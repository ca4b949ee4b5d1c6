"""The catalog's side of ``kiln gc``: the rows retention decides on, read in one go, and
the removal of the versions that go, in the caller's write transaction.

The rows are read as plain SQL through kiln.catalog.lookup's questions: ten thousand rows
read through the ORM's types cost twice as much, and a dry run on the embedded catalog
reads them through the standard library's sqlite3 in one read transaction, without
importing SQLAlchemy at all (:func:`reading`). The removal is ORM statements in chunks (a
bound parameter list stays small on both SQLite and PostgreSQL), without synchronising the
session: nothing in it holds the rows removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kiln.catalog.lookup import Lookup, open_sqlite, sqlite_path

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from kiln.catalog.db import Catalog

IMAGES = (
    "SELECT id, name, version, digest, parent_id, created, status, config_digest,"
    " recipe_path FROM images"
)
ASSIGNMENTS = "SELECT id, name, channel, image_id, at, previous_id, action FROM channel_assignments"
MACHINES = "SELECT id, name, image_id, stopped, removed FROM machines"
DIGESTS = "SELECT id, digest FROM images"

REMOVED_EARLIER = (
    "SELECT name, version, digest FROM events WHERE kind = 'removed' AND digest IN ({digests})"
)
PACKAGE_DIGESTS = "SELECT DISTINCT sha256 FROM packages WHERE image_id IN ({ids}) AND sha256 != ''"

Rows = Sequence[Sequence[Any]]
QUIET = {"synchronize_session": False}


def chunks(ids: Sequence[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


@contextmanager
def reading(url: str, catalog: Callable[[], Catalog]) -> Iterator[Lookup]:
    """The lookup's questions asked in one read transaction, so every answer is of the same
    moment: on the embedded SQLite catalog at HEAD through sqlite3 (a deferred ``BEGIN`` on
    the lookup's own connection, rolled back when it closes); on any other, or one that
    needs upgrading, through ``catalog()``'s read-only session."""
    path = sqlite_path(url)
    fast = open_sqlite(path) if path is not None else None
    if fast is None:
        from kiln.catalog.session import reader

        with catalog().reading() as session:
            yield reader(session)
        return
    try:
        fast.rows("BEGIN")
        yield fast
    finally:
        fast.close()


def snapshot(lookup: Lookup) -> tuple[Rows, Rows, Rows]:
    """Every image (id, name, version, digest, parent_id, created, status, config_digest,
    recipe_path), every channel assignment (id, name, channel, image_id, at, previous_id,
    action) and every machine row (id, name, image_id, stopped, removed)."""
    images, assignments, machines = (lookup.rows(sql) for sql in (IMAGES, ASSIGNMENTS, MACHINES))
    return images, assignments, machines


def _in(values: Sequence[Any], prefix: str) -> tuple[str, dict[str, Any]]:
    """Named parameters for an ``IN (...)`` list: the placeholders and their values."""
    params = {f"{prefix}{n}": value for n, value in enumerate(values)}
    return ", ".join(f":{key}" for key in params), params


def image_digests(lookup: Lookup) -> Rows:
    """(id, digest) of every image row, pending ones too."""
    return lookup.rows(DIGESTS)


def remove_versions(
    session: Session,
    images: Sequence[int],
    history: Sequence[int],
    replaced: Sequence[int],
    machines: Sequence[int],
    store: str,
) -> None:
    """Remove the image rows ``images`` and all that hangs on them: the channel rows
    ``history`` keep their place with the image left out, those in ``replaced`` forget the
    image they replaced, the (removed) machine rows ``machines`` go, and so do packages,
    artefacts, test runs, signatures, revocations, rebuild proofs, and the holdings of
    the store ``store`` and of registries. An image that is no longer a finished row (a
    rival changed it), or that another store holds (a rival's holding keeps the row by
    its foreign key), raises Conflict: the caller's transaction then removes nothing."""
    from sqlalchemy import delete, or_, update

    from kiln.catalog.db import Conflict
    from kiln.catalog.freshness import Proof
    from kiln.catalog.holdings import REGISTRY
    from kiln.catalog.lifecycle import Assignment, Revocation, Signature
    from kiln.catalog.machines import Machine, TestRun
    from kiln.catalog.models import Artefact, HoldingRow, Image, Package
    from kiln.catalog.revisions import OK

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
    for chunk in chunks(ids):
        session.execute(
            delete(HoldingRow).where(
                HoldingRow.image_id.in_(chunk),
                or_(HoldingRow.place == store, HoldingRow.kind == REGISTRY),
            ),
            execution_options=QUIET,
        )
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


def removed_earlier(lookup: Lookup, digests: Iterable[str]) -> set[tuple[str, int | None, str]]:
    """(name, version, digest) of each version with one of ``digests`` that a "removed"
    event says gc took."""
    found: set[tuple[str, int | None, str]] = set()
    for chunk in chunks(sorted(set(digests))):
        placeholders, params = _in(chunk, "d")
        rows = lookup.rows(REMOVED_EARLIER.format(digests=placeholders), **params)
        found |= {(name, version, digest) for name, version, digest in rows}
    return found


def package_digests(lookup: Lookup, image_ids: Sequence[int]) -> set[str]:
    """The sha256 of every cached package file the images ``image_ids`` hold."""
    needed: set[str] = set()
    for chunk in chunks(image_ids):
        placeholders, params = _in(chunk, "i")
        needed |= {
            row[0] for row in lookup.rows(PACKAGE_DIGESTS.format(ids=placeholders), **params)
        }
    return needed
