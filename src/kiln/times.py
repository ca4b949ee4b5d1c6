"""Times as kiln writes them, in the three forms it uses, every one in UTC.

- :func:`rfc3339`: ``2026-01-02T03:04:05Z``, what an image's labels, config, history and
  provenance carry (they are part of its digest, so this form never changes) and a proof
  reports;
- :func:`second`: ``2026-01-02T03:04:05``, to the second and without an offset, what the
  catalog shows (images, machines, channels, revocations) and a package view records;
- :func:`precise`: ``2026-01-02T03:04:05.678901``, to the microsecond, where records of
  work done side by side must not tie (a propagation's steps).

A time without an offset is taken to be UTC already, as the catalog stores them.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC, an offset-less one taken as UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    """``2026-01-02T03:04:05Z``: to the second, with the ``Z`` of UTC."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def second(moment: datetime) -> str:
    """``2026-01-02T03:04:05``: to the second, without an offset."""
    return utc(moment).replace(tzinfo=None, microsecond=0).isoformat()


def iso(moment: datetime | None) -> str | None:
    """:func:`second`, or None for a time that is not (yet) there: a catalog row's."""
    return None if moment is None else second(moment)


def precise(moment: datetime | None = None) -> str:
    """``2026-01-02T03:04:05.678901`` (now, unless given): to the microsecond, without an
    offset (a whole second has no fraction, as ``datetime.isoformat`` writes it)."""
    return utc(moment or datetime.now(UTC)).replace(tzinfo=None).isoformat()
