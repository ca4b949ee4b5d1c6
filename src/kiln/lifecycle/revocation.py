"""Revocation: an image (and everything baked on it) withdrawn from use, now or from a
time to come, until it is restored.

The lookup (kiln.catalog.lookup) enforces it on every read: a revoked image is never the
newest of its name nor what a channel points at, and what launches, bakes on or promotes
an image refuses it. What this module writes: the revocation row, the events, and for
every channel that pointed at a revoked image a row that empties it (action "revoke").
A scheduled revocation's rows are written by :func:`settle` the first time a command
writes to, or reads the channels of, a catalog after its time has come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kiln.actor import actor
from kiln.catalog import events, revocations
from kiln.catalog.lifecycle import Revocation
from kiln.catalog.lookup import ImageRow, Lookup, RevocationRow, iso
from kiln.catalog.session import Session
from kiln.errors import BadInput, KilnError
from kiln.lifecycle import channels


@dataclass(frozen=True)
class Left:
    """A channel a revocation emptied."""

    name: str
    channel: str
    image: str  # the ref it pointed at
    by: str  # the revoked image: it, or an ancestor

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "channel": self.channel, "image": self.image, "by": self.by}


def settle(session: Session, lookup: Lookup, now: datetime) -> list[Left]:
    """Empty every channel whose head is revoked by now and has no row saying so."""
    out = []
    for head in lookup.heads(at=now):
        if head.left is None or head.image is None:
            continue
        row, image = head.assignment, head.image
        channels.assign(
            session,
            row.name,
            row.channel,
            None,
            image.id,
            channels.REVOKE,
            gates=[{"gate": "revoked", "ok": False, "why": head.left.describe(image.ref)}],
            at=max(head.left.effective, row.at),
        )
        out.append(Left(row.name, row.channel, image.ref, head.left.ref))
    return out


@dataclass
class Revoking:
    image: ImageRow
    reason: str
    effective: datetime
    scheduled: bool
    descendants: list[ImageRow]
    left: list[Left] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image.ref,
            "digest": self.image.digest,
            "reason": self.reason,
            "effective": iso(self.effective),
            "scheduled": self.scheduled,
            "descendants": [d.ref for d in self.descendants],
            "channels_left": [left.to_json() for left in self.left],
            "actor": actor(),
        }


def _own(lookup: Lookup, image: ImageRow) -> list[RevocationRow]:
    return [r for r in lookup.revocations(image.id) if r.image_id == image.id]


def revoke(
    session: Session,
    lookup: Lookup,
    image: ImageRow,
    reason: str,
    effective: datetime,
    now: datetime,
) -> Revoking:
    """Revoke ``image`` from ``effective`` on, with its descendants; empty the channels
    that point at any of them now if that time has come."""
    reason = reason.strip()
    if not reason:
        raise BadInput("a revocation needs a reason", hint='--reason "CVE-2024-1234 in openssl"')
    own = _own(lookup, image)
    if own:
        state = "revoked" if own[0].due(now) else "to be revoked"
        raise KilnError(
            f"{image.ref} is already {state} from {iso(own[0].effective)}: {own[0].reason}",
            hint=f"kiln restore {image.ref} first to revoke it again with another time or reason",
        )
    session.add(
        Revocation(
            image_id=image.id, reason=reason, effective=effective, created=now, actor=actor()
        )
    )
    below = lookup.descendants(image.id)
    done = Revoking(image, reason, effective, effective > now, below)
    detail: dict[str, Any] = {
        "reason": reason,
        "effective": iso(effective),
        "scheduled": done.scheduled,
    }
    same = [d.ref for d in below if d.name == image.name]
    events.record(
        session, "revoked", image.name, image.version, image.digest, **detail, descendants=same
    )
    for family in sorted({d.name for d in below} - {image.name}):
        versions = [d.version for d in below if d.name == family]
        events.record(session, "revoked", family, through=image.ref, versions=versions, **detail)
    if not done.scheduled:
        done.left = settle(session, lookup, now)
    return done


def last_revoked(lookup: Lookup, name: str) -> ImageRow | None:
    """The version of ``name`` the newest revocation still unrestored was made on (what
    ``kiln revoke NAME`` revoked last: lifting it restores exactly what it revoked)."""
    found = revocations.last_revoked_of(lookup, name)
    return lookup.by_id(found) if found is not None else None


@dataclass(frozen=True)
class Standing:
    """One revocation not restored: of ``image`` itself, inherited by ``descendants``."""

    revocation: RevocationRow
    descendants: list[str]
    scheduled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.revocation.ref,
            "reason": self.revocation.reason,
            "effective": iso(self.revocation.effective),
            "scheduled": self.scheduled,
            "actor": self.revocation.actor,
            "descendants": self.descendants,
        }


def standing(lookup: Lookup, now: datetime, name: str | None = None) -> list[Standing]:
    """Every revocation not restored (in force or scheduled), oldest first, with the
    images that inherit it; ``name``: those that reach an image of that name."""
    out = []
    for found in revocations.unrestored(lookup):
        below = [d.ref for d in lookup.descendants(found.image_id)]
        names = {found.ref.rpartition(":")[0]} | {ref.rpartition(":")[0] for ref in below}
        if name is None or name in names:
            out.append(Standing(found, below, not found.due(now)))
    return out


def restore(session: Session, lookup: Lookup, image: ImageRow, now: datetime) -> RevocationRow:
    """Lift the image's own revocation (in force or scheduled); its descendants are usable
    again with it. Channels it left stay as they are: a rollback brings one back."""
    own = _own(lookup, image)
    if not own:
        inherited = lookup.revocations(image.id)
        if inherited:
            raise KilnError(
                f"{image.ref} is not revoked itself: it inherits {inherited[0].ref}'s revocation",
                hint=f"kiln restore {inherited[0].ref}",
            )
        raise KilnError(
            f"{image.ref} is not revoked", hint="'kiln where --revoked' lists what is revoked"
        )
    for found in own:
        row = session.get(Revocation, found.id)
        assert row is not None
        row.restored = now
    detail: dict[str, Any] = {"reason": own[0].reason, "was_effective": iso(own[0].effective)}
    events.record(session, "restored", image.name, image.version, image.digest, **detail)
    below = lookup.descendants(image.id)
    for family in sorted({d.name for d in below} - {image.name}):
        versions = [d.version for d in below if d.name == family]
        events.record(session, "restored", family, through=image.ref, versions=versions, **detail)
    return own[0]
