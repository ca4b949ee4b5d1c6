"""What a launch and a start write to the catalog, and what a start reads back from it.

A launch records its machine on a second thread while the machine boots (time to healthy
counts from kiln's own start, and loading SQLAlchemy is the slow part); a failed record
undoes the launch. The catalog is the process's, handed in as an opener (kiln.app hands
its Workspace's, opened once, on first use); without one, a call opens the catalog of
KILN_HOME for itself and closes it again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kiln.actor import actor
from kiln.catalog import ledger
from kiln.catalog.lookup import sqlite_path
from kiln.home import Home
from kiln.machines.folder import State

if TYPE_CHECKING:
    from kiln.catalog import Catalog
    from kiln.machines.launch import Launched, Request

Opener = Callable[[], "Catalog"]


@contextmanager
def opened(home: Home, catalog: Opener | None) -> Iterator[Catalog]:
    """The catalog ``catalog`` opens (the caller's, left open), or KILN_HOME's own."""
    if catalog is not None:
        yield catalog()
        return
    from kiln.catalog import Catalog

    own = Catalog(home.catalog_url)
    try:
        yield own
    finally:
        own.close()


class Recorder(threading.Thread):
    """The catalog's half of a launch, on its own thread while the machine boots.

    On the embedded catalog at HEAD it writes through sqlite3 (kiln.catalog.ledger) and
    imports no SQLAlchemy, whose import alone took CPU from the boot; on any other catalog
    it imports the catalog first (the slow part), then waits to be told what to record.
    ``result()`` raises what went wrong, so the launch can be undone.
    """

    def __init__(
        self, home: Home, request: Request, image_id: int, catalog: Opener | None = None
    ) -> None:
        super().__init__(name="catalog", daemon=True)
        self.home, self.request, self.image_id = home, request, image_id
        self.catalog = catalog
        self.launched: Launched | None = None
        self.error: BaseException | None = None
        self._go = threading.Event()

    def run(self) -> None:
        try:
            path = sqlite_path(self.home.catalog_url)
            if path is None:
                import kiln.catalog  # noqa: F401  (the import is what takes time)
            self._go.wait()
            if self.launched is None:
                return
            launch = _row(self.launched, self.image_id, self.request.throwaway)
            at = datetime.now(UTC)
            if path is not None:
                with ledger.sqlite_writer(path) as execute:
                    if execute is not None:
                        ledger.record_launch(execute, launch, at, actor())
                        return
            with opened(self.home, self.catalog) as catalog, catalog.writer() as execute:
                ledger.record_launch(execute, launch, at, actor())
        except BaseException as exc:  # handed to the main thread by result()
            self.error = exc

    def submit(self, launched: Launched) -> None:
        self.launched = launched
        self._go.set()

    def cancel(self) -> None:
        self._go.set()

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def _row(launched: Launched, image_id: int, throwaway: bool) -> ledger.Launch:
    return ledger.Launch(
        name=launched.name,
        image_id=image_id,
        image_ref=launched.image,
        digest=launched.digest,
        folder=str(launched.folder.path),
        nspawn_pid=launched.state.nspawn.pid,
        leader_pid=launched.state.leader.pid,
        config=dict(launched.values.plain),
        secret_keys=tuple(launched.values.secrets),
        volumes=launched.state.volumes,
        throwaway=throwaway,
    )


def recorded(catalog: Catalog, name: str) -> tuple[dict[str, str], list[str]]:
    """The plain values and the secret keys the machine was launched with (the catalog's)."""
    from kiln.catalog.machines import live

    with catalog.session() as session:
        rows = live(session, name)
        plain: dict[str, str] = {}
        for row in rows:
            plain.update(row.plain_config())
        return plain, sorted({key for row in rows for key in json.loads(row.secret_keys)})


def record_start(catalog: Catalog, state: State) -> None:
    """A stopped machine runs again: its new processes, and the event."""
    from kiln.catalog import events
    from kiln.catalog.machines import live

    with catalog.session() as session:
        for row in live(session, state.name):
            row.nspawn_pid = state.nspawn.pid
            row.leader_pid = state.leader.pid
            row.stopped = None
        name, _colon, version = state.image.partition(":")
        events.record(
            session, "machine_started", name, int(version), state.digest, machine=state.name
        )
