"""Open the catalog and answer the questions the rest of kiln asks of it."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import (
    Column,
    Engine,
    String,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kiln.catalog.models import Base, Image
from kiln.errors import BadInput, NotFound, StoreError

REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*)(?::(?P<version>[0-9]+|latest)|@(?P<digest>sha256:[0-9a-f]{64}))?"
)


BUSY_SECONDS = 30
PENDING = "pending"  # a bake between allocating its version and tagging it in the store
WRITE = "kiln_write"  # execution option: this connection's transactions write


class Conflict(StoreError):
    """Another kiln process changed the catalog first (a unique row, a lock it held)."""


def _sqlite_connect(dbapi_connection: object, _record: object) -> None:
    # pysqlite's own transaction handling starts transactions late and as DEFERRED; a
    # deferred transaction that reads, then writes, fails with "database is locked" at
    # once when another writer got in between (busy_timeout does not apply to that
    # upgrade). kiln issues BEGIN itself (see _sqlite_begin).
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    for attempt in range(50):  # the first switch to WAL needs the database to itself
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Write transactions take SQLite's write lock up front (waiting up to busy_timeout);
    read-only ones stay deferred, so readers never wait for a writer (WAL)."""
    immediate = connection.get_execution_options().get(WRITE, True)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


SCHEMA = Table("kiln_schema", Base.metadata, Column("fingerprint", String(64)))


def schema_fingerprint() -> str:
    parts = sorted(
        f"{table.name}.{column.name}:{column.type}"
        for table in Base.metadata.sorted_tables
        if table is not SCHEMA
        for column in table.columns
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        try:
            self._ensure_schema()
        except OperationalError as exc:
            raise _busy(exc) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(**{WRITE: False}), expire_on_commit=False
        )

    def _ensure_schema(self) -> None:
        """Create or upgrade the tables, unless the catalog already has this schema.

        A fingerprint of every table and column is kept in the catalog, so a catalog that
        is up to date costs one query to open, not an inspection of every table.
        """
        fingerprint = schema_fingerprint()
        try:
            with self.engine.connect().execution_options(**{WRITE: False}) as connection:
                stored = connection.execute(select(SCHEMA.c.fingerprint)).scalar()
        except DBAPIError:
            stored = None
        if stored == fingerprint:
            return
        # Several processes may open a new catalog at once: one transaction that holds the
        # database's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock)
        # checks again, then creates; the others wait and find it done.
        with self.engine.begin() as connection:
            if not self.sqlite:
                connection.execute(text("SELECT pg_advisory_xact_lock(4242424242)"))
            if inspect(connection).has_table(SCHEMA.name):
                stored = connection.execute(select(SCHEMA.c.fingerprint)).scalar()
                if stored == fingerprint:
                    return
            Base.metadata.create_all(connection)
            self._add_missing_columns(connection)
            connection.execute(SCHEMA.delete())
            connection.execute(SCHEMA.insert().values(fingerprint=fingerprint))

    def _add_missing_columns(self, connection: Connection) -> None:
        """Bring an older catalog up to date: columns added since are added with defaults.

        create_all makes missing tables but never alters existing ones; every schema change
        so far only adds columns, which this handles for SQLite and PostgreSQL alike.
        """
        existing = inspect(connection)
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            have = {column["name"] for column in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                default = getattr(column.default, "arg", None)
                literal = (
                    "''"
                    if isinstance(default, str)
                    else (str(default) if default is not None else "NULL")
                )
                connection.execute(
                    text(
                        f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} "
                        f"DEFAULT {literal}"
                    )
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back on any error.

        On SQLite it holds the write lock from the start, so keep it short. A rival's
        unique row becomes :class:`Conflict`; a catalog locked too long, a StoreError.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise Conflict(
                f"someone else got there first: {exc.orig}",
                hint="another kiln process wrote the same catalog row; run the command again",
            ) from None
        except OperationalError as exc:
            raise _busy(exc) from None

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: it never waits for writers and never blocks them."""
        try:
            with self._readers() as session:  # closing it rolls the read back
                yield session
        except OperationalError as exc:
            raise _busy(exc) from None

    def close(self) -> None:
        self.engine.dispose()

    # queries
    @staticmethod
    def by_cache_key(session: Session, key: str) -> Image | None:
        return session.scalars(
            select(Image)
            .where(Image.cache_key == key, Image.status == "ok")
            .order_by(Image.version.desc())
        ).first()

    @staticmethod
    def next_version(session: Session, name: str) -> int:
        current = session.scalar(select(func.max(Image.version)).where(Image.name == name))
        return (current or 0) + 1

    @staticmethod
    def resolve(session: Session, ref: str) -> Image:
        match = REF_RE.fullmatch(ref)
        if not match:
            raise BadInput(
                f"'{ref}' is not an image ref",
                hint="use name, name:version, name:latest or name@sha256:<hex>",
            )
        name, version, digest = match.group("name", "version", "digest")
        query = select(Image).where(Image.name == name, Image.status == "ok")
        if digest:
            query = query.where(Image.digest == digest)
        elif version and version != "latest":
            query = query.where(Image.version == int(version))
        image = session.scalars(query.order_by(Image.version.desc())).first()
        if image is None:
            known = session.scalar(select(func.count()).where(Image.name == name))
            hint = (
                f"'kiln images' lists the versions of {name}"
                if known
                else f'bake a recipe with [image] name = "{name}" first'
            )
            raise NotFound(f"no image {ref} in the catalog", hint=hint)
        return image

    @staticmethod
    def all_images(session: Session, pending: bool = False) -> Sequence[Image]:
        """Every image version; with ``pending``, also those of bakes not finished (or
        interrupted: ``kiln gc`` removes them), which are never shown as images."""
        query = select(Image).order_by(Image.name, Image.version)
        if not pending:
            query = query.where(Image.status != PENDING)
        return session.scalars(query).all()

    @staticmethod
    def pending(session: Session) -> Sequence[Image]:
        return session.scalars(select(Image).where(Image.status == PENDING)).all()

    @staticmethod
    def ancestors(image: Image) -> list[Image]:
        chain = []
        current = image.parent
        while current is not None:
            chain.append(current)
            current = current.parent
        return chain


def _busy(exc: OperationalError) -> StoreError:
    return StoreError(
        f"the catalog could not be used: {exc.orig}",
        hint=f"another kiln process held it for over {BUSY_SECONDS}s; run the command again",
    )
