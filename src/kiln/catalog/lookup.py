"""The catalog's answers on the clock, in plain SQL: which image a ref names (a version, a
digest, the newest usable one, what a channel points at), whether it or an ancestor is
revoked, whether a cache key was baked, an image's packages.

A cache-hit bake and ``kiln run`` ask only these questions, and importing SQLAlchemy alone
costs more than the rest of such a command. On the embedded SQLite catalog they are asked
through the standard library's sqlite3; on any other catalog (PostgreSQL), through the
SQLAlchemy engine kiln has open anyway (or a write transaction's own connection, so a
promotion reads what it is about to change). The SQL is the same for both: named
parameters (``:name``) and ``WITH RECURSIVE`` over ``parent_id``, which sqlite3,
PostgreSQL and SQLAlchemy's ``text()`` all take.

Revocation is enforced here, once: an image revoked (or with a revoked ancestor) from a
time that has come is never the newest version of its name, never what a channel points
at, and ``image(ref)`` refuses it unless the caller only looks (``usable=False``: inspect,
lineage, diff, where). Times are compared in Python, not SQL, because SQLite keeps them as
text and PostgreSQL as timestamps.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln.catalog.revisions import HEAD, OK
from kiln.errors import KilnError, NotFound, StoreError
from kiln.refs import Ref
from kiln.suggest import did_you_mean
from kiln.times import second, utc

Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

COLUMNS = (
    "id, name, version, digest, config_digest, cache_key, parent_id, recipe_path, recipe_digest"
)
ASSIGNMENT_COLUMNS = (
    "a.id, a.name, a.channel, a.image_id, a.previous_id, a.action, a.at, a.actor, a.forced, a.gates"
)
# A revocation is of bytes: it holds for every version with the revoked image's digest (a
# bake that lands on an older version's bytes numbers them anew) and all built on them.
# Every unrestored revocation of an image, of each of its ancestors and of the versions
# that share their bytes, nearest first.
CHAIN_REVOCATIONS = """
WITH RECURSIVE chain(id, parent_id, depth) AS (
    SELECT id, parent_id, 0 FROM images WHERE id = :id
    UNION ALL
    SELECT i.id, i.parent_id, c.depth + 1 FROM images i JOIN chain c ON i.id = c.parent_id
)
SELECT c.depth, r.id, r.image_id, i.name, i.version, r.reason, r.effective, r.actor, r.created
FROM chain c
JOIN images own ON own.id = c.id
JOIN images i ON i.digest = own.digest
JOIN revocations r ON r.image_id = i.id
WHERE r.restored IS NULL
ORDER BY c.depth, r.effective, r.id
"""
REVOCATIONS = """
SELECT 0, r.id, r.image_id, i.name, i.version, r.reason, r.effective, r.actor, r.created
FROM revocations r JOIN images i ON i.id = r.image_id
WHERE r.restored IS NULL
ORDER BY r.effective, r.id
"""
# The images below each root, the root and the versions with its bytes at depth 0.
DESCENDANTS = """
WITH RECURSIVE below(id, root, depth) AS (
    SELECT same.id, r.id, 0 FROM images r JOIN images same ON same.digest = r.digest
    WHERE r.id IN ({roots})
    UNION ALL
    SELECT i.id, b.root, b.depth + 1 FROM images i JOIN below b ON i.parent_id = b.id
)
SELECT id, root, depth FROM below
"""


class Revoked(KilnError):
    """An image is revoked, or descends from one that is: it is not launched, baked on or
    promoted (exit 1)."""


def moment(value: Any) -> datetime:
    """A time as the catalog returns it (SQLite: text; PostgreSQL: a datetime), in UTC."""
    found = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return utc(found)


def iso(value: datetime | None) -> str | None:
    """A time as kiln shows it: UTC, to the second, without an offset."""
    return None if value is None else second(moment(value))


@dataclass(frozen=True)
class ImageRow:
    """An image as the resolver hands it on: enough to find its bytes and its family."""

    id: int
    name: str
    version: int
    digest: str
    config_digest: str
    cache_key: str
    parent_id: int | None
    recipe_path: str
    recipe_digest: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class PackageRow:
    name: str
    architecture: str
    version: str
    sha256: str


@dataclass(frozen=True)
class RevocationRow:
    """One revocation: of ``ref`` itself, which an image inherits when ``ref`` is an
    ancestor of it."""

    id: int
    image_id: int
    ref: str
    reason: str
    effective: datetime
    actor: str
    created: datetime

    @classmethod
    def of(cls, row: Sequence[Any]) -> RevocationRow:
        _depth, rid, image_id, name, version, reason, effective, actor, created = row
        return cls(
            rid, image_id, f"{name}:{version}", reason, moment(effective), actor, moment(created)
        )

    def due(self, now: datetime) -> bool:
        return self.effective <= now

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.ref,
            "reason": self.reason,
            "effective": iso(self.effective),
            "actor": self.actor,
        }

    def describe(self, ref: str) -> str:
        """'web:3 is revoked through base:1 (since ...: reason)'."""
        through = "" if self.ref == ref else f" through {self.ref}"
        return f"{ref} is revoked{through} (since {iso(self.effective)}: {self.reason})"


@dataclass(frozen=True)
class AssignmentRow:
    """One row of a channel's history; the newest is its head."""

    id: int
    name: str
    channel: str
    image_id: int | None
    previous_id: int | None
    action: str
    at: datetime
    actor: str
    forced: bool
    gates: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> AssignmentRow:
        rid, name, channel, image_id, previous_id, action, at, actor, forced, gates = row
        return cls(
            rid,
            name,
            channel,
            image_id,
            previous_id,
            action,
            moment(at),
            actor,
            bool(forced),
            gates,
        )

    def gate_results(self) -> list[dict[str, Any]]:
        return list(json.loads(self.gates or "[]"))


@dataclass(frozen=True)
class Head:
    """What a channel points at now: its newest assignment, the image (None: empty), and
    the revocation that makes it leave that image, when one has come and no row says so
    yet (a scheduled revocation whose time came since)."""

    assignment: AssignmentRow
    image: ImageRow | None
    left: RevocationRow | None = None

    @property
    def current(self) -> ImageRow | None:
        return None if self.left is not None else self.image


def revoked_hint(revocation: RevocationRow) -> str:
    return (
        f"kiln restore {revocation.ref} lifts it; until then use a version that is not "
        f"revoked ('kiln where' shows which)"
    )


class Lookup:
    """Read-only questions over one connection: ``query`` runs SQL and returns rows."""

    def __init__(self, query: Query, close: Callable[[], None] = lambda: None) -> None:
        self._query = query
        self._close = close

    def close(self) -> None:
        self._close()

    def rows(self, sql: str, **params: Any) -> Sequence[Sequence[Any]]:
        """Any other read-only question, in the same plain SQL."""
        return self._query(sql, params)

    def _images(self, where: str, **params: Any) -> list[ImageRow]:
        sql = f"SELECT {COLUMNS} FROM images WHERE {where} ORDER BY version DESC"
        return [ImageRow(*row) for row in self._query(sql, params)]

    def image(self, ref: Ref, usable: bool = True) -> ImageRow:
        """The image ``ref`` names, or NotFound saying what there is instead.

        A bare name (or ``name:latest``) is the newest version not revoked; a channel is
        its head, unless that image is revoked now. ``usable``: a version or digest that
        is revoked (itself or through an ancestor) is refused with Revoked; commands that
        only look at images pass False.
        """
        if ref.channel is not None:
            return self._channel_image(ref)
        where = "name = :name AND status = :ok"
        params: dict[str, Any] = {"name": ref.name, "ok": OK}
        if ref.digest is not None:
            where += " AND digest = :digest"
            params["digest"] = ref.digest
        elif ref.version is not None:
            where += " AND version = :version"
            params["version"] = ref.version
        found = self._images(where, **params)
        if found and ref.newest:
            return self._newest(ref, found)
        if found:
            if usable:
                revocation = self.revocation(found[0].id)
                if revocation is not None:
                    raise Revoked(revocation.describe(found[0].ref), hint=revoked_hint(revocation))
            return found[0]
        known = self._query("SELECT count(*) FROM images WHERE name = :name", {"name": ref.name})
        if known[0][0]:
            raise NotFound(
                f"no image {ref} in the catalog",
                hint=f"'kiln images' lists the versions of {ref.name}",
            )
        names = [row[0] for row in self._query("SELECT DISTINCT name FROM images", {})]
        raise NotFound(
            f"no image {ref} in the catalog{did_you_mean(ref.name, names)}",
            hint=f'bake a recipe with [image] name = "{ref.name}" first',
        )

    def _newest(self, ref: Ref, found: list[ImageRow]) -> ImageRow:
        from kiln.catalog.versions import first_usable

        revoked = self.revoked_images()
        usable = first_usable(((row.id, row.name) for row in found), revoked).get(ref.name)
        for row in found:
            if row.id == usable:
                return row
        newest = found[0]
        revocation = revoked[newest.id]
        raise Revoked(
            f"every version of {ref.name} is revoked; the newest: "
            + revocation.describe(newest.ref),
            hint=revoked_hint(revocation),
        )

    def _channel_image(self, ref: Ref) -> ImageRow:
        assert ref.channel is not None
        head = self.head(ref.name, ref.channel)
        if head is None:
            known = [row.channel for row in self.head_rows(ref.name)]
            raise NotFound(
                f"no image {ref}: {ref.name} has no channel {ref.channel}"
                + did_you_mean(ref.channel, known),
                hint=f"'kiln channels {ref.name}' lists its channels; "
                f"kiln promote {ref.name}:VERSION {ref.channel} makes one",
            )
        if head.left is not None and head.image is not None:
            raise Revoked(
                f"channel {ref.channel} of {ref.name} is empty: "
                + head.left.describe(head.image.ref),
                hint=f"kiln rollback {ref.name} {ref.channel}, or kiln promote another version",
            )
        if head.image is None:
            why = ""
            previous = head.assignment.previous_id
            gone = self.by_ids([previous]).get(previous) if previous is not None else None
            if gone is not None and head.assignment.action == "revoke":
                revocation = self.revocation(gone.id, at=head.assignment.at)
                if revocation is not None:
                    raise Revoked(
                        f"channel {ref.channel} of {ref.name} is empty: "
                        + revocation.describe(gone.ref),
                        hint=f"kiln rollback {ref.name} {ref.channel}, "
                        "or kiln promote another version",
                    )
                why = f": {gone.ref} left it when it was revoked (restored since)"
            elif gone is not None:
                why = f": {gone.ref} left it ({head.assignment.action})"
            raise NotFound(
                f"channel {ref.channel} of {ref.name} is empty{why}",
                hint=f"kiln promote {ref.name}:VERSION {ref.channel}",
            )
        return head.image

    def by_id(self, image_id: int) -> ImageRow:
        [row] = self._images("id = :id", id=image_id)
        return row

    def by_ids(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        out: dict[int, ImageRow] = {}
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            params = {f"i{n}": value for n, value in enumerate(chunk)}
            where = f"id IN ({', '.join(':' + key for key in params)})"
            out.update((row.id, row) for row in self._images(where, **params))
        return out

    def by_cache_key(self, key: str, usable: bool = True) -> ImageRow | None:
        """The image baked from these exact inputs. When it is revoked, a bake refuses
        (Revoked): the same inputs would make what was revoked."""
        found = self._images("cache_key = :key AND status = :ok", key=key, ok=OK)
        if not found:
            return None
        if usable:
            revocation = self.revocation(found[0].id)
            if revocation is not None:
                raise Revoked(
                    f"these inputs make {found[0].ref}, and " + revocation.describe(found[0].ref),
                    hint="change the recipe or its lock (kiln lock --update), or kiln restore "
                    f"{revocation.ref} if the revocation was a mistake",
                )
        return found[0]

    def packages(self, image_id: int) -> list[PackageRow]:
        rows = self._query(
            "SELECT name, architecture, version, sha256 FROM packages"
            " WHERE image_id = :id ORDER BY name",
            {"id": image_id},
        )
        return [PackageRow(*row) for row in rows]

    # revocation
    def revocations(self, image_id: int) -> list[RevocationRow]:
        """Unrestored revocations of the image and its ancestors, nearest first, whether
        their time has come or not."""
        return [RevocationRow.of(row) for row in self._query(CHAIN_REVOCATIONS, {"id": image_id})]

    def revocation(self, image_id: int, at: datetime | None = None) -> RevocationRow | None:
        """The revocation in force for the image at ``at`` (now): its own, else its
        nearest revoked ancestor's; None when it is usable."""
        now = at or datetime.now(UTC)
        for revocation in self.revocations(image_id):
            if revocation.due(now):
                return revocation
        return None

    def revoked_images(self, at: datetime | None = None) -> dict[int, RevocationRow]:
        """Every image revoked at ``at`` (now), itself or through an ancestor, with the
        revocation in force (the nearest). Two queries; one when nothing is revoked."""
        now = at or datetime.now(UTC)
        roots: dict[int, RevocationRow] = {}
        for row in self._query(REVOCATIONS, {}):
            revocation = RevocationRow.of(row)
            if revocation.due(now):
                roots.setdefault(revocation.image_id, revocation)
        if not roots:
            return {}
        params = {f"r{n}": image_id for n, image_id in enumerate(roots)}
        sql = DESCENDANTS.format(roots=", ".join(":" + key for key in params))
        nearest: dict[int, tuple[int, RevocationRow]] = {}
        for image_id, root, depth in self._query(sql, params):
            if image_id not in nearest or depth < nearest[image_id][0]:
                nearest[image_id] = (depth, roots[root])
        return {image_id: revocation for image_id, (_depth, revocation) in nearest.items()}

    def descendants(self, image_id: int) -> list[ImageRow]:
        """What inherits ``image_id``'s revocation: the other versions with its bytes and
        every image below them all (children, their children, ...), by name, version."""
        rows = self._query(DESCENDANTS.format(roots=":root"), {"root": image_id})
        below = self.by_ids([found for found, _root, _depth in rows if found != image_id])
        return sorted(below.values(), key=lambda row: (row.name, row.version))

    # channels
    def assignments(self, name: str, channel: str) -> list[AssignmentRow]:
        """A channel's whole history, oldest first."""
        rows = self._query(
            f"SELECT {ASSIGNMENT_COLUMNS} FROM channel_assignments a"
            " WHERE a.name = :name AND a.channel = :channel ORDER BY a.id",
            {"name": name, "channel": channel},
        )
        return [AssignmentRow.of(row) for row in rows]

    def head_rows(self, name: str | None = None) -> list[AssignmentRow]:
        """The newest assignment of every channel (of ``name``), by name and channel."""
        where = " WHERE name = :name" if name is not None else ""
        rows = self._query(
            f"SELECT {ASSIGNMENT_COLUMNS} FROM channel_assignments a JOIN ("
            f"SELECT max(id) AS id FROM channel_assignments{where} GROUP BY name, channel"
            ") h ON h.id = a.id ORDER BY a.name, a.channel",
            {"name": name} if name is not None else {},
        )
        return [AssignmentRow.of(row) for row in rows]

    def heads(self, name: str | None = None, at: datetime | None = None) -> list[Head]:
        """Every channel (of ``name``) with what it points at ``at`` (now)."""
        rows = self.head_rows(name)
        images = self.by_ids([r.image_id for r in rows if r.image_id is not None])
        revoked = self.revoked_images(at) if images else {}
        return [
            Head(
                row,
                images.get(row.image_id) if row.image_id is not None else None,
                revoked.get(row.image_id) if row.image_id is not None else None,
            )
            for row in rows
        ]

    def head(self, name: str, channel: str, at: datetime | None = None) -> Head | None:
        rows = self._query(
            f"SELECT {ASSIGNMENT_COLUMNS} FROM channel_assignments a"
            " WHERE a.name = :name AND a.channel = :channel ORDER BY a.id DESC LIMIT 1",
            {"name": name, "channel": channel},
        )
        if not rows:
            return None
        row = AssignmentRow.of(rows[0])
        image = self.by_ids([row.image_id]).get(row.image_id) if row.image_id else None
        if image is None:
            return Head(row, None)
        return Head(row, image, self.revocation(image.id, at))


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` catalog URL, or None for any other catalog."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    return Path(url[len(prefix) :])


BUSY_SECONDS = 30  # how long a catalog connection waits for SQLite's write lock


def at_head(connection: sqlite3.Connection) -> bool:
    """The SQLite catalog behind ``connection`` has the schema at HEAD."""
    try:
        found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no schema yet
        return False
    return found is not None and found[0] == HEAD


def open_sqlite(path: Path) -> Lookup | None:
    """A lookup over the SQLite catalog at ``path`` through sqlite3, or None when it is
    not there yet or not at HEAD (kiln.catalog.Catalog creates or upgrades it)."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error:
        return None

    def query(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        try:
            return connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(
                f"the catalog {path} could not be read: {exc}",
                hint="run 'kiln fsck'; another kiln may have held it for too long",
            ) from None

    if not at_head(connection):
        connection.close()
        return None
    return Lookup(query, connection.close)
