"""Where an image's bytes are: the stores (KILN_HOMEs) and registries that hold each image
version, and the stores that write to a catalog many of them share.

A store is named by its id (kiln.home.Home.store_id); a ``stores`` row says on which host
and at which path it was last seen. A ``holdings`` row says one place holds one version's
bytes: a store (``place`` is its id, ``kind`` ``store``) or a registry (``place`` is the
location, ``docker://127.0.0.1:5000/team/web@sha256:...``, ``kind`` ``registry``). A bake
holds its row from the moment it takes its version; gc releases this store's holding and
removes the row only when no other store holds it.

Reads take a write transaction's ``Session`` or a plain-SQL ``Lookup`` (the embedded
catalog's sqlite3, which a dry-run gc or ``kiln images`` ask without SQLAlchemy); writes
take a ``Session``. SQLAlchemy is imported only by the writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kiln.catalog.lookup import Lookup, moment
from kiln.home import Home

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

STORE = "store"
REGISTRY = "registry"
KINDS = (STORE, REGISTRY)
PLACE_LENGTH = 255

HOLDINGS = (
    "SELECT h.image_id, h.place, h.kind, h.recorded, s.host, s.home FROM holdings h"
    " LEFT JOIN stores s ON s.id = h.place"
)
ORDER = " ORDER BY h.image_id, h.kind DESC, h.id"  # stores, then registries, oldest first
HELD_BY = "SELECT image_id FROM holdings WHERE place = :place"
UNCLAIMED = (
    "SELECT i.id, i.name, i.version, i.digest, i.status FROM images i"
    " WHERE NOT EXISTS (SELECT 1 FROM holdings h WHERE h.image_id = i.id) ORDER BY i.id"
)


@dataclass(frozen=True)
class Holder:
    """The store a process writes for, as its ``stores`` row records it."""

    store_id: str
    host: str
    home: str

    @classmethod
    def of(cls, home: Home) -> Holder:
        """``home``'s store (its id made on first use), on this host."""
        import socket

        return cls(home.store_id, socket.gethostname(), str(home.root))

    def register(self, session: Session) -> None:
        register_store(session, self.store_id, self.host, self.home)


@dataclass(frozen=True)
class Holding:
    """One place that holds an image's bytes; ``host`` and ``home`` for a store (as its
    ``stores`` row last said), empty for a registry."""

    place: str
    kind: str
    recorded: datetime
    host: str = ""
    home: str = ""

    def to_json(self, here: str) -> dict[str, Any]:
        """As ``kiln images --json`` and ``kiln where --json`` show it; ``here``: this
        store's id."""
        return {
            "place": self.place,
            "kind": self.kind,
            "host": self.host,
            "home": self.home,
            "here": self.kind == STORE and self.place == here,
        }


@dataclass(frozen=True)
class Unclaimed:
    """An image row no place holds (baked before the catalog recorded holdings)."""

    id: int
    name: str
    version: int
    digest: str
    status: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def _lookup(source: Session | Lookup) -> Lookup:
    if isinstance(source, Lookup):
        return source
    from kiln.catalog.session import reader

    return reader(source)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _holdings(rows: Iterable[Sequence[Any]]) -> dict[int, list[Holding]]:
    out: dict[int, list[Holding]] = {}
    for image_id, place, kind, recorded, host, home in rows:
        out.setdefault(image_id, []).append(
            Holding(place, kind, moment(recorded), host or "", home or "")
        )
    return out


def holders(source: Session | Lookup, image_ids: Sequence[int]) -> dict[int, list[Holding]]:
    """The places holding each of ``image_ids`` (stores, then registries, each in the
    order they came to hold it); an image no place holds is left out."""
    out: dict[int, list[Holding]] = {}
    lookup = _lookup(source)
    for chunk in _chunks(sorted(set(image_ids))):
        params = {f"i{n}": value for n, value in enumerate(chunk)}
        where = f" WHERE h.image_id IN ({', '.join(':' + key for key in params)})"
        out.update(_holdings(lookup.rows(HOLDINGS + where + ORDER, **params)))
    return out


def all_holders(source: Session | Lookup) -> dict[int, list[Holding]]:
    """The places holding every image that some place holds, in one query (kiln gc)."""
    return _holdings(_lookup(source).rows(HOLDINGS + ORDER))


def held_by(source: Session | Lookup, place: str) -> set[int]:
    """The ids of the images ``place`` (a store id, or a registry location) holds."""
    return {row[0] for row in _lookup(source).rows(HELD_BY, place=place)}


def unclaimed(source: Session | Lookup) -> list[Unclaimed]:
    """Image rows (pending ones too) that no place holds, by id."""
    return [Unclaimed(*row) for row in _lookup(source).rows(UNCLAIMED)]


def _insert(session: Session, table: Any) -> Any:
    """An INSERT that can say what to do on a unique clash, in the catalog's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def register_store(session: Session, store_id: str, host: str, home: str) -> None:
    """Record the store ``store_id`` at ``host`` and ``home`` (a path) as seen now: a new
    row, or the existing one's host, home and ``last_seen`` brought up to date."""
    from kiln.catalog.models import StoreRow

    now = datetime.now(UTC)
    statement = _insert(session, StoreRow.__table__).values(
        id=store_id, host=host[:PLACE_LENGTH], home=home, first_seen=now, last_seen=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={"host": host[:PLACE_LENGTH], "home": home, "last_seen": now},
        )
    )


def hold(session: Session, image_id: int, place: str, kind: str = STORE) -> None:
    """Record that ``place`` holds image ``image_id``'s bytes; holding it already is no
    change (a rival recording it at the same moment neither)."""
    hold_all(session, [image_id], place, kind)


def hold_all(session: Session, image_ids: Sequence[int], place: str, kind: str = STORE) -> None:
    """:func:`hold` for each of ``image_ids``, in few statements."""
    if kind not in KINDS:
        raise ValueError(f"a holding is of kind {' or '.join(KINDS)}, not {kind!r}")
    if not place or len(place) > PLACE_LENGTH:
        raise ValueError(f"a holding's place is 1 to {PLACE_LENGTH} characters: {place!r}")
    if not image_ids:
        return
    from kiln.catalog.models import HoldingRow

    now = datetime.now(UTC)
    session.flush()  # the images it names, when this transaction added them
    for chunk in _chunks(sorted(set(image_ids))):
        rows = [{"image_id": i, "place": place, "kind": kind, "recorded": now} for i in chunk]
        statement = _insert(session, HoldingRow.__table__).on_conflict_do_nothing(
            index_elements=["image_id", "place"]
        )
        session.execute(statement, rows)


def release(session: Session, image_id: int, place: str) -> None:
    """``place`` no longer holds image ``image_id`` (not holding it is no change)."""
    release_all(session, [image_id], place)


def release_all(session: Session, image_ids: Sequence[int], place: str) -> None:
    """:func:`release` for each of ``image_ids``, in few statements."""
    from sqlalchemy import delete

    from kiln.catalog.models import HoldingRow

    for chunk in _chunks(sorted(set(image_ids))):
        session.execute(
            delete(HoldingRow).where(HoldingRow.image_id.in_(chunk), HoldingRow.place == place),
            execution_options={"synchronize_session": False},
        )
