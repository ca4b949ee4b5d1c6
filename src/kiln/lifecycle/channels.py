"""Channels: named pointers (dev, staging, prod) of an image family, moved by promotion.

A channel's history is the append-only ``channel_assignments`` table; its head is its
newest row. Reading goes through the catalog's plain-SQL lookup (kiln.catalog.lookup),
over a write transaction's own connection when a command is about to add a row, so it
reads what it changes.

Rollback treats the history as a stack: every assignment pushes what the channel then
held (an empty channel, after a revocation, too), and a rollback pops. Replaying the rows
rebuilds the stack, so each rollback steps one assignment further back, never back onto
what an earlier rollback undid; a version revoked since is stepped over.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kiln import refs
from kiln.actor import actor
from kiln.catalog.lookup import AssignmentRow, ImageRow, iso
from kiln.errors import BadInput, shown

if TYPE_CHECKING:  # the replay (stack, spans) is gc's and the quick reads': no ORM for them
    from kiln.catalog.lifecycle import Assignment
    from kiln.catalog.session import Session

PROMOTE, ROLLBACK, REVOKE = "promote", "rollback", "revoke"


def check_name(channel: str) -> str:
    why = refs.channel_problem(channel)
    if why is not None:
        raise BadInput(
            f"{shown(channel)} is not a channel name: {why}", hint="e.g. dev, staging, prod"
        )
    return channel


class Held(Protocol):
    """What :func:`stack` reads of a row: an assignment row, or retention's view of one."""

    @property
    def image_id(self) -> int | None: ...

    @property
    def action(self) -> str: ...


def stack(rows: Iterable[Held]) -> list[int | None]:
    """What the channel held after each assignment still in force, oldest first; the last
    is its head. A rollback row pops down to the image it went back to."""
    held: list[int | None] = []
    for row in rows:
        if row.action != ROLLBACK:
            held.append(row.image_id)
            continue
        if held:
            held.pop()
        while held and held[-1] != row.image_id:
            held.pop()
        if not held:
            held.append(row.image_id)  # a history gc shortened: start again from here
    return held


@dataclass(frozen=True)
class Target:
    """Where a rollback goes: ``image_id``, stepping over ``skipped`` (revoked, or empty
    after a revocation)."""

    image_id: int
    skipped: list[int | None]


def rollback_target(rows: Sequence[AssignmentRow], usable: Callable[[int], bool]) -> Target | None:
    """The version the channel held before its current assignment (and before what earlier
    rollbacks undid); None when there is none left to go back to."""
    held = stack(rows)
    if held:
        held.pop()
    skipped: list[int | None] = []
    while held:
        candidate = held.pop()
        if candidate is not None and usable(candidate):
            return Target(candidate, skipped)
        skipped.append(candidate)
    return None


def holds(
    rows: Sequence[AssignmentRow], image_id: int, now: datetime
) -> list[tuple[datetime, datetime]]:
    """The spans during which ``image_id`` was the channel's head (the last one ends now
    if it still is)."""
    spans: list[tuple[datetime, datetime]] = []
    for number, row in enumerate(rows):
        if row.image_id == image_id:
            end = rows[number + 1].at if number + 1 < len(rows) else now
            spans.append((row.at, end))
    return spans


def assign(
    session: Session,
    name: str,
    channel: str,
    image_id: int | None,
    previous_id: int | None,
    action: str,
    *,
    forced: bool = False,
    gates: Sequence[dict[str, Any]] = (),
    at: datetime | None = None,
) -> Assignment:
    """Add one row to the channel's history (in the caller's write transaction)."""
    from kiln.catalog.lifecycle import Assignment

    row = Assignment(
        name=name,
        channel=channel,
        image_id=image_id,
        previous_id=previous_id,
        action=action,
        at=at or datetime.now(UTC),
        actor=actor(),
        forced=forced,
        gates=json.dumps(list(gates), sort_keys=True),
    )
    session.add(row)
    session.flush()
    return row


def ref_of(images: dict[int, ImageRow], image_id: int | None) -> str | None:
    if image_id is None:
        return None
    found = images.get(image_id)
    return found.ref if found is not None else f"#{image_id} (removed)"


def assignment_json(row: AssignmentRow, images: dict[int, ImageRow]) -> dict[str, Any]:
    image = images.get(row.image_id) if row.image_id is not None else None
    return {
        "id": row.id,
        "action": row.action,
        "image": ref_of(images, row.image_id),
        "digest": image.digest if image is not None else None,
        "previous": ref_of(images, row.previous_id),
        "at": iso(row.at),
        "actor": row.actor,
        "forced": row.forced,
        "gates": row.gate_results(),
    }
