"""The event history: one append-only row per thing that happened to an image family.

Kinds: baked, tested, signed, promoted, rolled_back, revoked, restored, machine_started,
machine_stopped, machine_removed, removed (by gc), refreshed, propagated, proved (a
rebuild proof, passed or not). An event names its image by name,
version and digest, never by catalog row, so ``kiln history`` still tells it after gc.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from kiln.actor import actor
from kiln.catalog.lifecycle import Event

KINDS = (
    "baked",
    "tested",
    "signed",
    "promoted",
    "rolled_back",
    "revoked",
    "restored",
    "machine_started",
    "machine_stopped",
    "machine_removed",
    "removed",
    "refreshed",
    "propagated",
    "proved",
    "pushed",
    "pulled",
)


def record(
    session: Session,
    kind: str,
    name: str,
    version: int | None = None,
    digest: str = "",
    *,
    machine: str = "",
    at: datetime | None = None,
    **detail: Any,
) -> Event:
    """Add an event to ``session`` (the caller's write transaction: it lands with the
    change it tells of, or not at all)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event = Event(
        at=at or datetime.now(UTC),
        kind=kind,
        name=name,
        version=version,
        digest=digest,
        machine=machine,
        actor=actor(),
        detail=json.dumps(detail, sort_keys=True, default=str),
    )
    session.add(event)
    return event
