"""A machine's launch and a push's registry copies, written in plain SQL: on the embedded
catalog without SQLAlchemy.

kiln run and kiln up record each machine while it boots; kiln push records where it put
each image while skopeo sends it. Importing SQLAlchemy and the
catalog's models costs about 0.35 s of CPU, and on a 2-core host that CPU is taken from the
boots themselves (ten at once in kiln up). So the three statements of a launch are written
once, here, with named parameters, and run either on the standard library's sqlite3 (the
embedded catalog at HEAD: :func:`sqlite_writer`) or on a SQLAlchemy connection
(kiln.catalog.Catalog.writer: PostgreSQL, or an embedded catalog that must be upgraded
first), in one write transaction either way.

SQLite keeps times as text; they are written as SQLAlchemy writes a ``DateTime`` there (UTC,
no offset), so the ORM reads these rows as it reads its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.catalog.lookup import BUSY_SECONDS, at_head, sqlite_path
from kiln.errors import StoreError
from kiln.times import utc

Execute = Callable[[str, Mapping[str, Any]], None]

RETIRE = "UPDATE machines SET removed = :at WHERE name = :name AND removed IS NULL"
EVENT = (
    "INSERT INTO events (at, kind, name, version, digest, machine, actor, detail)"
    " VALUES (:at, 'machine_started', :family, :version, :digest, :name, :actor, :detail)"
)
MACHINE = (
    "INSERT INTO machines (name, image_id, image_ref, digest, folder, created, nspawn_pid,"
    " leader_pid, config, secret_keys, volumes, throwaway)"
    " VALUES (:name, :image_id, :image_ref, :digest, :folder, :at, :nspawn_pid, :leader_pid,"
    " :config, :secret_keys, :volumes, :throwaway)"
)


HOLD = (
    "INSERT INTO holdings (image_id, place, kind, recorded) VALUES (:image_id, :place,"
    " 'registry', :at) ON CONFLICT (image_id, place) DO NOTHING"
)
PUSHED = (
    "INSERT INTO events (at, kind, name, version, digest, machine, actor, detail)"
    " SELECT :at, 'pushed', name, version, digest, '', :actor, :detail FROM images"
    " WHERE id = :image_id"
)


def record_copies(
    execute: Execute, copies: Sequence[tuple[int, str]], at: datetime, actor: str
) -> None:
    """Each image id is held at its place (docker://HOST/REPO@DIGEST, a registry copy kiln
    push made), with a ``pushed`` event; in the caller's write transaction."""
    for image_id, place in copies:
        execute(HOLD, {"image_id": image_id, "place": place, "at": at})
        detail = json.dumps({"to": place}, sort_keys=True)
        execute(PUSHED, {"image_id": image_id, "at": at, "actor": actor, "detail": detail})


@contextmanager
def writing(url: str) -> Iterator[Execute]:
    """One write transaction for this module's statements: sqlite3 on an embedded catalog
    at HEAD, else a SQLAlchemy connection (kiln.catalog.Catalog.writer)."""
    path = sqlite_path(url)
    if path is not None:
        with sqlite_writer(path) as execute:
            if execute is not None:
                yield execute
                return
    from kiln.catalog.db import Catalog

    catalog = Catalog(url)
    try:
        with catalog.writer() as execute:
            yield execute
    finally:
        catalog.close()


@dataclass(frozen=True)
class Launch:
    """A machine that has just booted, as its catalog row holds it."""

    name: str
    image_id: int
    image_ref: str  # name:version
    digest: str
    folder: str
    nspawn_pid: int
    leader_pid: int
    config: Mapping[str, str]  # plain values only
    secret_keys: tuple[str, ...]  # names, never values
    volumes: Mapping[str, str]
    throwaway: bool


def record_launch(execute: Execute, launch: Launch, at: datetime, actor: str) -> None:
    """The machine's row, its machine_started event, and that any earlier machine of its
    name (whose folder is gone) is history; in the caller's write transaction."""
    family, _colon, version = launch.image_ref.partition(":")
    execute(RETIRE, {"at": at, "name": launch.name})
    detail = json.dumps({"throwaway": launch.throwaway}, sort_keys=True)
    event = {"family": family, "version": int(version), "digest": launch.digest}
    execute(EVENT, {"at": at, "name": launch.name, "actor": actor, "detail": detail, **event})
    execute(
        MACHINE,
        {
            "name": launch.name,
            "image_id": launch.image_id,
            "image_ref": launch.image_ref,
            "digest": launch.digest,
            "folder": launch.folder,
            "at": at,
            "nspawn_pid": launch.nspawn_pid,
            "leader_pid": launch.leader_pid,
            "config": json.dumps(dict(launch.config), sort_keys=True),
            "secret_keys": json.dumps(sorted(launch.secret_keys)),
            "volumes": json.dumps(dict(launch.volumes), sort_keys=True),
            "throwaway": launch.throwaway,
        },
    )


def sqlite_time(moment: datetime) -> str:
    """A time as SQLAlchemy's DateTime keeps it in SQLite: UTC, to the microsecond."""
    return utc(moment).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: sqlite_time(v) if isinstance(v, datetime) else v for k, v in params.items()}


@contextmanager
def sqlite_writer(path: Path) -> Iterator[Execute | None]:
    """One write transaction on the SQLite catalog at ``path`` through sqlite3, holding the
    write lock from the start as kiln.catalog.db's do; None when the catalog is not at
    HEAD (kiln.catalog.Catalog upgrades it). Committed when the block ends, rolled back
    on any error."""
    try:
        connection = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"the catalog {path} could not be opened: {exc}") from None
    try:
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("BEGIN IMMEDIATE")
        if not at_head(connection):
            connection.execute("ROLLBACK")
            yield None
            return

        def execute(sql: str, params: Mapping[str, Any]) -> None:
            connection.execute(sql, sqlite_params(params))

        yield execute
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise StoreError(
            f"the catalog {path} could not be written: {exc}",
            hint="run 'kiln fsck'; another kiln may have held it for too long",
        ) from None
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()
