"""An image's life after its bake: promote, channels, rollback, revoke and restore, each on
the process's Workspace (where and history: kiln.app.trace).

Writes (a promotion, a rollback, a revocation) run in one catalog write transaction that
first settles revocations whose time has come (kiln.lifecycle.revocation), then reads
through the same transaction what it is about to change. Reads (channels, where,
history) ask the catalog's plain-SQL lookup, so ``kiln where`` over a large catalog never
loads SQLAlchemy unless a scheduled revocation is due and its rows must be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln import refs
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import AssignmentRow, Head, ImageRow, Lookup, iso, moment
from kiln.catalog.trace import is_known
from kiln.errors import BadInput, KilnError, NotFound


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-24T18:00``, with or without an offset; without one it
    is UTC, as kiln shows times)."""
    try:
        return moment(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise BadInput(
            f"'{text}' is not an ISO 8601 time",
            hint="e.g. 2026-12-24T18:00 (UTC) or 2026-12-24T18:00+01:00",
        ) from None


# promote


@dataclass
class Promotion:
    image: ImageRow
    channel: str
    outcomes: list[Any]  # kiln.lifecycle.gates.Outcome
    policy: dict[str, str | None]
    previous: str | None = None
    promoted: bool = False
    unchanged: bool = False  # the channel held this image already
    forced: bool = False

    @property
    def unmet(self) -> list[Any]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.image.name,
            "channel": self.channel,
            "image": self.image.ref,
            "digest": self.image.digest,
            "previous": self.previous,
            "promoted": self.promoted,
            "unchanged": self.unchanged,
            "forced": self.forced,
            "gates": [o.to_json() for o in self.outcomes],
            "unmet": [o.gate for o in self.unmet],
            "policy": self.policy,
        }


def promote(
    workspace: Workspace,
    ref: str,
    channel: str,
    force: bool = False,
    policy_file: Path | None = None,
) -> Promotion:
    """Point ``channel`` of the image's name at the image ``ref`` names, if every gate the
    policy sets for that channel holds (with ``force``, anyway: recorded as forced)."""
    from kiln.catalog import events
    from kiln.catalog.session import reader
    from kiln.lifecycle import channels, gates, policy, revocation

    channels.check_name(channel)
    parsed = refs.parse(ref)
    found = policy.find(workspace.home, policy_file)
    wanted = found.gates(channel)  # a channel the policy does not define: BadInput
    layout = workspace.layout
    if wanted.max_security_age is not None:
        # the fresh gate reads the image's apt sources from its layers the first time:
        # do that now, not inside the write transaction (on SQLite, the catalog's lock)
        from kiln.lifecycle import freshness

        freshness.image_lines(workspace.home, layout, workspace.lookup.image(parsed, usable=False))
    with workspace.catalog.session() as session:
        lookup = reader(session)
        now = now_utc()
        revocation.settle(session, lookup, now)
        image = lookup.image(parsed, usable=False)  # the revoked gate says why not
        head = lookup.head(image.name, channel, now)
        current = head.current if head is not None else None
        candidate = gates.Candidate(
            image, channel, wanted, found, lookup, layout, workspace.home, now
        )
        result = Promotion(image, channel, gates.evaluate(candidate), found.describe())
        result.previous = current.ref if current is not None else None
        if current is not None and current.id == image.id:
            result.unchanged = True
            return result
        unmet = result.unmet
        if unmet and (not force or any(o.gate in gates.UNFORCEABLE for o in unmet)):
            return result
        results = [o.to_json() for o in result.outcomes]
        result.forced = bool(unmet)
        channels.assign(
            session,
            image.name,
            channel,
            image.id,
            current.id if current is not None else None,
            channels.PROMOTE,
            forced=result.forced,
            gates=results,
            at=now,
        )
        events.record(
            session,
            "promoted",
            image.name,
            image.version,
            image.digest,
            at=now,
            channel=channel,
            previous=result.previous,
            forced=result.forced,
            gates=results,
            policy=result.policy,
        )
        result.promoted = True
    return result


# channels and rollback


def settle_due(workspace: Workspace, heads: list[Head]) -> None:
    """Write the rows of revocations whose time came since the catalog was last written
    (only then does this read load the ORM)."""
    if not any(head.left is not None for head in heads):
        return
    from kiln.catalog.session import reader
    from kiln.lifecycle import revocation

    with workspace.catalog.session() as session:
        revocation.settle(session, reader(session), now_utc())


def known(lookup: Lookup, name: str) -> None:
    if is_known(lookup, name):
        return
    raise NotFound(f"no image named {name} in the catalog", hint="'kiln images' lists them")


def _head_json(head: Head, images: dict[int, ImageRow]) -> dict[str, Any]:
    from kiln.lifecycle.channels import assignment_json

    row = head.assignment
    data = assignment_json(row, images)
    current = head.current
    return {
        "name": row.name,
        "channel": row.channel,
        "image": current.ref if current is not None else None,
        "digest": current.digest if current is not None else None,
        "since": iso(row.at),
        "head": data,
        "left": head.left.describe(head.image.ref) if head.left and head.image else None,
    }


def channel_list(workspace: Workspace, name: str | None = None) -> list[dict[str, Any]]:
    """Every channel (of ``name``, each with its whole history, newest first)."""
    from kiln.lifecycle.channels import assignment_json

    lookup = workspace.lookup
    if name is not None:
        known(lookup, name)
    heads = lookup.heads(name)
    settle_due(workspace, heads)
    if any(head.left is not None for head in heads):
        heads = lookup.heads(name)
    from kiln.catalog import removed

    gone = removed.gone(lookup, {head.assignment.name for head in heads})
    out = []
    for head in heads:
        row = head.assignment
        history = lookup.assignments(row.name, row.channel) if name is not None else []
        ids = [i for r in history for i in (r.image_id, r.previous_id) if i is not None]
        ids += [i for i in (row.image_id, row.previous_id) if i is not None]
        images = lookup.by_ids(ids)
        data = _head_json(head, images)
        data["head"] = _with_removed(data["head"], gone)
        if name is not None:
            data["history"] = [
                _with_removed(assignment_json(r, images), gone) for r in reversed(history)
            ]
        out.append(data)
    return out


def _with_removed(data: dict[str, Any], gone: Any) -> dict[str, Any]:
    """An assignment as kiln.lifecycle.channels tells it, with the versions kiln gc removed
    since named again (``image_removed``, ``previous_removed``), never left as empty."""
    for key, found in (("image", gone.image), ("previous", gone.previous)):
        was = found.get(data["id"])
        data[f"{key}_removed"] = was is not None
        if was is not None:
            data[key] = was.ref
            if key == "image":
                data["digest"] = was.digest
    return data


def rollback(workspace: Workspace, name: str, channel: str) -> dict[str, Any]:
    """Point ``channel`` back at what it held before its current assignment."""
    from kiln.catalog import events
    from kiln.catalog.session import reader
    from kiln.lifecycle import channels, revocation

    channels.check_name(channel)
    with workspace.catalog.session() as session:
        lookup = reader(session)
        now = now_utc()
        revocation.settle(session, lookup, now)
        rows = lookup.assignments(name, channel)
        if not rows:
            known(lookup, name)
            raise NotFound(
                f"{name} has no channel {channel}", hint=f"'kiln channels {name}' lists them"
            )
        target = channels.rollback_target(rows, lambda i: lookup.revocation(i, now) is None)
        current = rows[-1].image_id
        if target is None:
            raise KilnError(
                f"channel {channel} of {name} has no earlier version to roll back to"
                + _removed_below(lookup, rows),
                hint=f"kiln promote {name}:VERSION {channel}",
            )
        skipped = [i for i in target.skipped if i is not None]
        images = lookup.by_ids([target.image_id, *skipped, *([current] if current else [])])
        channels.assign(session, name, channel, target.image_id, current, channels.ROLLBACK, at=now)
        image = images[target.image_id]
        result = {
            "name": name,
            "channel": channel,
            "image": image.ref,
            "digest": image.digest,
            "previous": channels.ref_of(images, current),
            "skipped": [channels.ref_of(images, i) for i in skipped],
        }
        events.record(
            session,
            "rolled_back",
            name,
            image.version,
            image.digest,
            at=now,
            channel=channel,
            previous=result["previous"],
            skipped=result["skipped"],
        )
    return result


def _removed_below(lookup: Lookup, rows: list[AssignmentRow]) -> str:
    """What the channel held before its head that gc removed since, as a clause."""
    from kiln.catalog import removed
    from kiln.lifecycle import channels

    below = rows[:-1]
    emptied = [r for r in below if r.image_id is None and r.action != channels.REVOKE]
    if not emptied:
        return ""
    gone = removed.gone(lookup, {r.name for r in rows}).image
    refs = sorted({gone[r.id].ref for r in emptied if r.id in gone})
    if not refs:
        return ": what it held before was removed by kiln gc"
    held = ", ".join(refs)
    return (
        f": {held}, which it held before, {'was' if len(refs) == 1 else 'were'} removed by kiln gc"
    )


# revoke and restore


def revoke(workspace: Workspace, ref: str, reason: str, at: str | None = None) -> dict[str, Any]:
    from kiln.catalog.session import reader
    from kiln.lifecycle import revocation

    parsed = refs.parse(ref)
    now = now_utc()
    effective = parse_time(at) if at else now
    with workspace.catalog.session() as session:
        lookup = reader(session)
        revocation.settle(session, lookup, now)
        image = lookup.image(parsed, usable=False)
        done = revocation.revoke(session, lookup, image, reason, effective, now)
    return done.to_json()


def restore(workspace: Workspace, ref: str) -> dict[str, Any]:
    """Lift a revocation: the image's own (a version, a digest, a channel's image), or,
    for a bare NAME, the newest revocation made on a version of it (``kiln revoke NAME``
    after ``kiln revoke NAME`` is lifted one at a time, newest first)."""
    from kiln.catalog.session import reader
    from kiln.lifecycle import channels, revocation

    parsed = refs.parse(ref)
    now = now_utc()
    with workspace.catalog.session() as session:
        lookup = reader(session)
        revocation.settle(session, lookup, now)
        if parsed.newest:  # a name: what the newest revoke of one of its versions revoked
            last = revocation.last_revoked(lookup, parsed.name)
            if last is None:
                known(lookup, parsed.name)
                raise KilnError(
                    f"no version of {parsed.name} is revoked",
                    hint="'kiln where --revoked' lists what is revoked",
                )
            image = last
        else:
            image = lookup.image(parsed, usable=False)
        lifted = revocation.restore(session, lookup, image, now)
        family = {image.id} | {row.id for row in lookup.descendants(image.id)}
        left = [  # channels this revocation emptied (of the image or what is built on it)
            head.assignment
            for head in lookup.heads()
            if head.image is None
            and head.assignment.action == channels.REVOKE
            and head.assignment.previous_id in family
        ]
        back = lookup.by_ids([row.previous_id for row in left if row.previous_id is not None])
        usable = {i for i in back if lookup.revocation(i, now) is None}
    return {
        "image": image.ref,
        "digest": image.digest,
        "reason": lifted.reason,
        "was_effective": iso(lifted.effective),
        "restored": iso(now),
        "channels_left": [
            {"name": row.name, "channel": row.channel, "image": back[row.previous_id].ref}
            for row in left
            if row.previous_id in usable
        ],
    }


# where
