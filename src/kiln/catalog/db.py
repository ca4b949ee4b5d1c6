"""Open the catalog and answer the questions the rest of kiln asks of it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kiln.catalog.ledger import Execute, sqlite_params
from kiln.catalog.lifecycle import ImageName
from kiln.catalog.lookup import BUSY_SECONDS, Lookup
from kiln.catalog.models import Image
from kiln.catalog.revisions import HEAD, PENDING
from kiln.errors import StoreError

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


def _conflict(exc: IntegrityError) -> Conflict:
    return Conflict(
        f"someone else got there first: {exc.orig}",
        hint="another kiln process wrote the same catalog row; run the command again",
    )


class Catalog:
    def __init__(self, url: str, upgrade: bool = True) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        if upgrade:  # `kiln catalog status` looks without changing anything
            try:
                self._ensure_schema()
            except OperationalError as exc:
                raise _busy(exc) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(**{WRITE: False}), expire_on_commit=False
        )

    def revision(self) -> str | None:
        """The catalog's schema revision: one plain query, None without alembic_version."""
        try:
            with self.engine.connect().execution_options(**{WRITE: False}) as connection:
                value = connection.execute(text("SELECT version_num FROM alembic_version"))
                found = value.scalar()
        except DBAPIError:
            return None
        return None if found is None else str(found)

    def _ensure_schema(self) -> None:
        """Create a new catalog at HEAD, or upgrade an older one (kiln.catalog.migrate).

        An up-to-date catalog costs one query to open; Alembic is imported only when
        there is something to do, under a lock that makes a rival wait and find it done.
        """
        if self.revision() == HEAD:
            return
        from kiln.catalog.migrate import upgrade

        upgrade(self)

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
            raise _conflict(exc) from None
        except OperationalError as exc:
            raise _busy(exc) from None

    @contextmanager
    def writer(self) -> Iterator[Execute]:
        """A write transaction for plain SQL with named parameters (kiln.catalog.ledger):
        committed when the block ends, rolled back on any error, as ``session``'s."""
        try:
            with self.engine.begin() as connection:

                def execute(sql: str, params: Mapping[str, Any]) -> None:
                    values = sqlite_params(params) if self.sqlite else dict(params)
                    connection.execute(text(sql), values)

                yield execute
        except IntegrityError as exc:
            raise _conflict(exc) from None
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

    def lookup(self) -> Lookup:
        """The read-only questions of kiln.catalog.lookup, asked over this engine."""

        def query(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
            try:
                with self.engine.connect().execution_options(**{WRITE: False}) as connection:
                    return [tuple(row) for row in connection.execute(text(sql), params)]
            except OperationalError as exc:
                raise _busy(exc) from None

        return Lookup(query)

    def close(self) -> None:
        self.engine.dispose()

    # queries
    @staticmethod
    def next_version(session: Session, name: str) -> int:
        """Take the next version number of ``name``, in the caller's write transaction.

        The counter in ``image_names`` only goes up (one UPDATE ... RETURNING, so two
        PostgreSQL transactions cannot both read the same value), and it outlives the
        rows gc removes: a number is never handed out twice. A name that is new gets a
        row; a rival inserting it first is a unique clash, and the caller tries again.
        """
        taken = session.execute(
            update(ImageName)
            .where(ImageName.name == name)
            .values(last_version=ImageName.last_version + 1)
            .returning(ImageName.last_version)
        ).scalar()
        if taken is not None:
            return int(taken)
        current = session.scalar(select(func.max(Image.version)).where(Image.name == name))
        session.add(ImageName(name=name, last_version=(current or 0) + 1))
        session.flush()
        return (current or 0) + 1

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
