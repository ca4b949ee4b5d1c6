"""The catalog's answers on the clock, in plain SQL: which image a ref names, whether a
cache key was baked, an image's packages.

A cache-hit bake and ``kiln run`` ask only these questions, and importing SQLAlchemy alone
costs more than the rest of such a command. On the embedded SQLite catalog they are asked
through the standard library's sqlite3; on any other catalog (PostgreSQL), through the
SQLAlchemy engine kiln has open anyway. The SQL is the same for both: named parameters
(``:name``), which sqlite3 and SQLAlchemy's ``text()`` both take.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.catalog.revisions import HEAD, OK
from kiln.errors import NotFound, StoreError
from kiln.refs import Ref

Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

COLUMNS = (
    "id, name, version, digest, config_digest, cache_key, parent_id, recipe_path, recipe_digest"
)


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


class Lookup:
    """Read-only questions over one connection: ``query`` runs SQL and returns rows."""

    def __init__(self, query: Query, close: Callable[[], None] = lambda: None) -> None:
        self._query = query
        self._close = close

    def close(self) -> None:
        self._close()

    def _images(self, where: str, **params: Any) -> list[ImageRow]:
        sql = f"SELECT {COLUMNS} FROM images WHERE {where} ORDER BY version DESC"
        return [ImageRow(*row) for row in self._query(sql, params)]

    def image(self, ref: Ref) -> ImageRow:
        """The image ``ref`` names, or NotFound saying what there is instead."""
        if ref.channel is not None:
            raise NotFound(
                f"no image {ref}: {ref.channel} is not a version of {ref.name}",
                hint=f"'kiln images' lists the versions of {ref.name}",
            )
        where = "name = :name AND status = :ok"
        params: dict[str, Any] = {"name": ref.name, "ok": OK}
        if ref.digest is not None:
            where += " AND digest = :digest"
            params["digest"] = ref.digest
        elif ref.version is not None:
            where += " AND version = :version"
            params["version"] = ref.version
        found = self._images(where, **params)
        if found:
            return found[0]
        known = self._query("SELECT count(*) FROM images WHERE name = :name", {"name": ref.name})
        hint = (
            f"'kiln images' lists the versions of {ref.name}"
            if known[0][0]
            else f'bake a recipe with [image] name = "{ref.name}" first'
        )
        raise NotFound(f"no image {ref} in the catalog", hint=hint)

    def by_id(self, image_id: int) -> ImageRow:
        [row] = self._images("id = :id", id=image_id)
        return row

    def by_cache_key(self, key: str) -> ImageRow | None:
        found = self._images("cache_key = :key AND status = :ok", key=key, ok=OK)
        return found[0] if found else None

    def packages(self, image_id: int) -> list[PackageRow]:
        rows = self._query(
            "SELECT name, architecture, version, sha256 FROM packages"
            " WHERE image_id = :id ORDER BY name",
            {"id": image_id},
        )
        return [PackageRow(*row) for row in rows]


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` catalog URL, or None for any other catalog."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    return Path(url[len(prefix) :])


def open_sqlite(path: Path) -> Lookup | None:
    """A lookup over the SQLite catalog at ``path`` through the standard library, or None
    when the catalog is not there yet or not at HEAD (opening it through
    kiln.catalog.Catalog creates or upgrades it)."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(path, timeout=30, isolation_level=None)
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

    try:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        revision = None
    if revision is None or revision[0] != HEAD:
        connection.close()
        return None
    return Lookup(query, connection.close)
