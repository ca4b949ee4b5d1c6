"""The runs of ``kiln propagate``: a ``propagations`` row per run and a
``propagation_items`` row per name of its plan, and what a plan reads of the catalog.

The plan's questions are plain SQL on the lookup (``--dry-run`` imports no SQLAlchemy);
a run's rows are written through the models, each state change in its own transaction,
so a run cut short is found again by the next ``kiln propagate`` of its origin and channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kiln.catalog.lookup import Lookup
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.catalog.db import Catalog

RUNNING, DONE = "running", "done"

PlanRow = tuple[int, str, int, int | None, str, str, str, str]


def _now() -> datetime:
    return datetime.now(UTC)


def plan_rows(lookup: Lookup) -> list[PlanRow]:
    """Every image as a plan reads it: id, name, version, parent id, digest, recipe path,
    status, recipe digest."""
    sql = (
        "SELECT id, name, version, parent_id, digest, recipe_path, status, recipe_digest"
        " FROM images"
    )
    return [tuple(row) for row in lookup.rows(sql)]


def parents_recorded(lookup: Lookup, versions: Iterable[tuple[str, int]]) -> dict[str, str | None]:
    """Each of these versions' parent as its recipe named it, by name: what its bake
    recorded (None when the event says nothing readable)."""
    wanted = set(versions)
    out: dict[str, str | None] = {}
    for name, version, detail in lookup.rows(
        "SELECT name, version, detail FROM events WHERE kind = 'baked'"
    ):
        if (name, version) not in wanted:
            continue
        try:
            value = json.loads(detail).get("parent_named")
        except (ValueError, AttributeError):
            value = None
        out[name] = value if isinstance(value, str) else None
    return out


def image_id(lookup: Lookup, digest: str) -> int | None:
    """The id of an image with these bytes, None when the catalog has none."""
    rows = lookup.rows("SELECT id FROM images WHERE digest = :d LIMIT 1", d=digest)
    return int(rows[0][0]) if rows else None


def has_unfinished(lookup: Lookup, digest: str, channel: str) -> bool:
    """Whether a run of this origin and channel did not finish."""
    rows = lookup.rows(
        "SELECT 1 FROM propagations WHERE origin_digest = :d AND channel = :c"
        " AND state != :done LIMIT 1",
        d=digest,
        c=channel,
        done=DONE,
    )
    return bool(rows)


@dataclass(frozen=True)
class NewItem:
    """A name of the plan as a new run records it."""

    position: int
    wave: int
    name: str
    recipe: str
    parent: str
    reason: str
    state: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ItemRow:
    """A ``propagation_items`` row as the run reads it back."""

    id: int
    position: int
    wave: int
    name: str
    recipe: str
    parent: str
    reason: str
    state: str
    ref: str
    digest: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRow:
    id: int
    origin: str
    origin_digest: str
    continued: bool  # an unfinished run found again, not a new one
    items: list[ItemRow]


def open_run(
    catalog: Catalog,
    origin: str,
    origin_digest: str,
    channel: str,
    options: dict[str, Any],
    items: Sequence[NewItem],
) -> RunRow:
    """The newest unfinished run of this origin and channel, running again; or a new
    one holding ``items``."""
    from kiln.actor import actor
    from kiln.catalog.freshness import Propagation, PropagationItem

    with catalog.session() as session:
        found = (
            session.query(Propagation)
            .filter_by(origin_digest=origin_digest, channel=channel)
            .filter(Propagation.state != DONE)
            .order_by(Propagation.id.desc())
            .first()
        )
        continued = found is not None
        if found is None:
            now = _now()
            found = Propagation(
                origin=origin,
                origin_digest=origin_digest,
                channel=channel,
                state=RUNNING,
                created=now,
                actor=actor(),
                options=json.dumps(options),
            )
            for item in items:
                found.items.append(
                    PropagationItem(
                        position=item.position,
                        wave=item.wave,
                        name=item.name,
                        recipe=item.recipe,
                        parent=item.parent,
                        reason=item.reason,
                        state=item.state,
                        detail=json.dumps(item.detail),
                        updated=now,
                    )
                )
            session.add(found)
        else:
            found.state = RUNNING
            found.finished = None
        session.flush()
        rows = [_item_row(item) for item in found.items]
        return RunRow(found.id, found.origin, found.origin_digest, continued, rows)


def load_run(catalog: Catalog, run: int) -> tuple[RunRow, str, str] | None:
    """Run ``run`` as it is now, with its channel ("" for none) and state; None if gone."""
    from kiln.catalog.freshness import Propagation

    with catalog.session() as session:
        found = session.get(Propagation, run)
        if found is None:
            return None
        rows = [_item_row(item) for item in found.items]
        return (
            RunRow(found.id, found.origin, found.origin_digest, True, rows),
            found.channel,
            found.state,
        )


def _item_row(item: Any) -> ItemRow:
    return ItemRow(
        item.id,
        item.position,
        item.wave,
        item.name,
        item.recipe,
        item.parent,
        item.reason,
        item.state,
        item.ref,
        item.digest,
        item.details(),
    )


def save_item(
    catalog: Catalog,
    run: int,
    item: int,
    name: str,
    state: str,
    ref: str,
    digest: str,
    detail: dict[str, Any],
    event: dict[str, Any] | None = None,
) -> None:
    """One state change of a run's item, committed now; with ``event``, a ``propagated``
    event holding it in the same transaction."""
    from kiln.catalog import events
    from kiln.catalog.freshness import PropagationItem

    with catalog.session() as session:
        row = session.get(PropagationItem, item)
        if row is None:
            raise KilnError(f"propagation {run} lost its item {name} while it ran")
        row.state, row.ref, row.digest = state, ref, digest
        row.detail = json.dumps(detail, sort_keys=True, default=str)
        row.updated = _now()
        if event is not None:
            version = int(ref.rpartition(":")[2]) if ref else None
            events.record(session, "propagated", name, version, digest, **event)


def finish_run(catalog: Catalog, run: int, state: str) -> None:
    """A run's end: its state and when."""
    from kiln.catalog.freshness import Propagation

    with catalog.session() as session:
        row = session.get(Propagation, run)
        if row is not None:
            row.state, row.finished = state, _now()
