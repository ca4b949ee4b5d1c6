"""Bring a catalog to this kiln's schema, and say where it stands (`kiln catalog`).

A catalog is in one of five states: ``empty`` (no tables: created at HEAD from the
models, then stamped), ``unversioned`` (made by kiln 0.1.0, before migrations: it has the
tables but no alembic_version, so it is stamped at the first revision, then upgraded),
``behind`` (upgraded by the Alembic migrations in catalog/migrations), ``current``, or
``ahead`` (a newer kiln upgraded it: refused). Every change happens in one transaction
that holds the catalog's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
lock), and the state is read again under it, so of two processes opening an old catalog
at once one migrates and the other finds it done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from kiln.catalog import freshness as _freshness  # noqa: F401
from kiln.catalog import lifecycle as _lifecycle  # noqa: F401  (its tables join the metadata)
from kiln.catalog import machines as _machines  # noqa: F401
from kiln.catalog.db import (
    WRITE,
    _busy,
    _sqlite_begin,
    _sqlite_connect,
)
from kiln.catalog.models import Base
from kiln.catalog.revisions import FIRST, HEAD, REVISIONS
from kiln.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

    from kiln.catalog.db import Catalog

SCRIPTS = Path(__file__).parent / "migrations"
LOCK_KEY = 4242424242  # the PostgreSQL advisory lock every schema change takes

# Alembic's own version table, as `alembic stamp` makes it; a new catalog gets it
# without importing Alembic.
VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


@dataclass(frozen=True)
class Status:
    url: str  # without a password
    current: str | None
    state: str  # empty | unversioned | behind | current | ahead

    @property
    def head(self) -> str:
        return HEAD

    @property
    def pending(self) -> list[str]:
        """The revisions an upgrade would run, in order (an unversioned catalog is stamped
        at the first revision, which it already has, without running it)."""
        if self.state not in ("unversioned", "behind"):
            return []
        have = REVISIONS.index(self.current) if self.current is not None else 0
        return list(REVISIONS[have + 1 :])

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "current": self.current,
            "head": self.head,
            "state": self.state,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class Upgraded:
    before: Status
    applied: list[str]  # revisions run, in order ("created" a new catalog: none)

    @property
    def after(self) -> str:
        return HEAD

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.before.url,
            "from": self.before.current,
            "from_state": self.before.state,
            "to": self.after,
            "applied": self.applied,
        }


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def read_state(connection: Connection, url: str) -> Status:
    found = inspect(connection)
    if found.has_table(VERSION.name):
        value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        current = None if value is None else str(value)
        if current == HEAD:
            state = "current"
        elif current in REVISIONS:
            state = "behind"
        elif current is None:
            state = "unversioned" if found.has_table("images") else "empty"
        else:
            state = "ahead"
        return Status(shown_url(url), current, state)
    return Status(shown_url(url), None, "unversioned" if found.has_table("images") else "empty")


def status(catalog: Catalog) -> Status:
    """Where the catalog stands, without changing it (and without waiting for a writer)."""
    try:
        with catalog.engine.connect().execution_options(**{WRITE: False}) as connection:
            return read_state(connection, catalog.url)
    except DBAPIError as exc:
        raise StoreError(
            f"the catalog {shown_url(catalog.url)} could not be read: {exc.orig}",
            hint="check KILN_CATALOG_URL (or KILN_HOME) and that the database is up",
        ) from None


def _foreign_keys_off(dbapi_connection: Any, _record: object) -> None:
    # SQLite copies a table to alter a column (Alembic's batch mode); with foreign keys
    # on, dropping the old copy would fail or cascade. They are checked after instead.
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


@contextmanager
def _locked(catalog: Catalog) -> Iterator[Connection]:
    """A connection in a transaction that holds the catalog's write lock."""
    engine = create_engine(catalog.url, poolclass=NullPool)
    if catalog.sqlite:
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "connect", _foreign_keys_off)
        event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.begin() as connection:
            if not catalog.sqlite:
                connection.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_KEY})"))
            yield connection
            if catalog.sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StoreError(
                        f"the catalog upgrade left {len(broken)} broken references "
                        f"(first: {tuple(broken[0])}); nothing was changed",
                        hint="keep a copy of the catalog and report this",
                    )
    finally:
        engine.dispose()


def _alembic(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def upgrade(catalog: Catalog) -> Upgraded:
    """Bring the catalog to HEAD (see the module's docstring). Idempotent; a failure
    changes nothing (one transaction) and is a StoreError."""
    try:
        return _upgrade(catalog)
    except OperationalError as exc:
        if "locked" in str(exc.orig) or "busy" in str(exc.orig):
            raise _busy(exc) from None
        raise _failed(catalog, exc) from None
    except DBAPIError as exc:
        raise _failed(catalog, exc) from None


def _failed(catalog: Catalog, exc: DBAPIError) -> StoreError:
    return StoreError(
        f"the catalog {shown_url(catalog.url)} could not be upgraded to {HEAD}: {exc.orig}; "
        "nothing was changed",
        hint="'kiln catalog status' shows where it stands; keep a copy of it and report this",
    )


def _upgrade(catalog: Catalog) -> Upgraded:
    with _locked(catalog) as connection:
        before = read_state(connection, catalog.url)
        if before.state == "current":
            return Upgraded(before, [])
        if before.state == "ahead":
            raise StoreError(
                f"the catalog {before.url} is at schema revision {before.current}, which "
                f"this kiln does not know (its newest is {HEAD})",
                hint="a newer kiln upgraded this catalog: use that version of kiln",
            )
        if before.state == "empty":
            Base.metadata.create_all(connection)
            VERSION.create(connection, checkfirst=True)
            connection.execute(VERSION.delete())
            connection.execute(VERSION.insert().values(version_num=HEAD))
            return Upgraded(before, [])
        from alembic import command

        config = _alembic(connection)
        if before.state == "unversioned":
            command.stamp(config, FIRST)
        command.upgrade(config, "head")
        after = read_state(connection, catalog.url)
        if after.state != "current":
            raise StoreError(
                f"the catalog upgrade stopped at {after.current}, not {HEAD}",
                hint="keep a copy of the catalog and report this",
            )
        return Upgraded(before, before.pending)
