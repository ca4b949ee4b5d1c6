"""Retention: which image versions ``kiln gc`` keeps, and why each one stays.

Pure: given the catalog's rows (image versions, channel assignments, the machines that
use images) and the rules, :func:`decide` says what stays with every reason that keeps it,
and what goes. Nothing here reads the catalog or touches the store (:func:`in_force`
reads only the policy file, for the rules the flags leave to it); ``kiln.app.gc`` does
both, so the decision can be listed by ``kiln gc --dry-run`` exactly as it is carried out.

Per image name, a version stays when any of these holds:

- it is one of the last ``keep_last`` versions of its name ("last 5 of web");
- it is younger than ``keep_younger_than`` ("younger than 30d");
- a channel points at it now ("head of web:prod"), whatever the rules say, or pointed at
  it within ``keep_channel_history`` ("in web:staging until 3d ago");
- ``kiln rollback`` would point a channel back at it ("rollback target of web:prod"):
  whatever the rules say, the version a channel held before its head stays (revoked
  versions, which a rollback steps over, are passed over here too);
- a machine uses it, running or stopped ("machine web-1 runs it");
- a bake in progress builds on it: a pending row's parent, or a layer a live overlay
  mounts (the caller passes those as ``pins``);
- it is an ancestor of a version that stays ("ancestor of web:7"): a child is its
  parent's layers plus one.

Without any rule nothing is removed: a store never loses an image because nobody wrote a
policy. Rows of unfinished bakes (pending) are neither kept nor removed here; gc takes
those back on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from kiln.durations import seconds
from kiln.errors import BadInput
from kiln.home import Home
from kiln.lifecycle.channels import stack
from kiln.lifecycle.policyfile import locate

ANCESTOR_NAMES = 3  # descendants named in an "ancestor of" reason; the rest are counted
NO_RULE = "no retention rule is set"


@dataclass(frozen=True)
class Rules:
    """What to keep. Durations are written as a policy writes them (30s, 15m, 24h, 7d, 2w)."""

    keep_last: int | None = None
    keep_younger_than: str | None = None
    keep_channel_history: str | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 0:
            raise ValueError(f"keep_last is {self.keep_last}: it counts versions, 0 or more")
        for value in (self.keep_younger_than, self.keep_channel_history):
            if value is not None:
                seconds(value)  # ValueError says what a duration looks like

    @property
    def active(self) -> bool:
        """Some rule is set: without one, gc removes no image."""
        return any(
            value is not None
            for value in (self.keep_last, self.keep_younger_than, self.keep_channel_history)
        )

    def over(self, other: Rules) -> Rules:
        """These rules where set, ``other``'s elsewhere (flags over the policy file)."""
        return Rules(
            self.keep_last if self.keep_last is not None else other.keep_last,
            self.keep_younger_than or other.keep_younger_than,
            self.keep_channel_history or other.keep_channel_history,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_last": self.keep_last,
            "keep_younger_than": self.keep_younger_than,
            "keep_channel_history": self.keep_channel_history,
        }


def in_force(
    home: Home,
    policy_file: Path | None,
    keep_last: int | None,
    keep_younger_than: str | None,
    keep_channel_history: str | None,
) -> tuple[Rules, dict[str, str | None], dict[str, str]]:
    """The flags over the policy file's ``[retention]`` (a bad flag: BadInput naming the
    flag, exit 2); the file's ``{"path", "digest"}``; and where each rule in force comes
    from: its flag (``--keep-last``), or the file's path."""
    path = locate(home, policy_file)
    if path is None:  # no policy file: the flags alone, and the policy models never load
        found: dict[str, str | None] = {"path": None, "digest": None}
        file_rules = Rules()
    else:
        from kiln.lifecycle import policy

        loaded = policy.load(path)
        found = loaded.describe()
        kept = loaded.retention
        file_rules = Rules(kept.keep_last, kept.keep_younger_than, kept.keep_channel_history)
    given: dict[str, Any] = {
        "keep_last": keep_last,
        "keep_younger_than": keep_younger_than,
        "keep_channel_history": keep_channel_history,
    }
    for key, value in given.items():
        try:
            Rules(**{key: value})
        except ValueError as exc:
            hint = "a count, 0 or more" if key == "keep_last" else "e.g. 30s, 15m, 24h, 7d, 2w"
            raise BadInput(f"kiln gc {_flag(key)} {value}: {exc}", hint=hint) from None
    rules = Rules(keep_last, keep_younger_than, keep_channel_history).over(file_rules)
    sources = {
        key: _flag(key) if given[key] is not None else str(found["path"])
        for key, value in rules.to_json().items()
        if value is not None
    }
    return rules, found, sources


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Version:
    """An image version as retention sees it: its identity, lineage and age."""

    id: int
    name: str
    version: int
    digest: str
    parent_id: int | None
    created: datetime
    pending: bool = False  # a bake between taking its version and finishing

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Assigned:
    """One channel_assignments row: from ``at`` on, channel ``name:channel`` held
    ``image_id`` (None: nothing), until the next row of the same channel."""

    id: int
    name: str
    channel: str
    image_id: int | None
    at: datetime
    action: str = "promote"  # promote | rollback | revoke: what kiln.lifecycle.channels replays


@dataclass(frozen=True)
class Use:
    """A machine made from an image, running or stopped (a removed one uses nothing)."""

    machine: str
    image_id: int
    stopped: bool = False


@dataclass
class Decision:
    rules: Rules
    now: datetime
    kept: dict[int, list[str]] = field(default_factory=dict)  # id -> reasons, rule order
    removed: list[Version] = field(default_factory=list)  # by name, then version
    versions: dict[int, Version] = field(default_factory=dict)
    held: dict[int, list[str]] = field(default_factory=dict)  # id -> channels that held it

    def reasons(self, image_id: int) -> list[str]:
        return self.kept.get(image_id, [])

    def held_by(self, image_id: int) -> list[str]:
        """The channels that ever pointed at the version ('web:prod'), by name."""
        return self.held.get(image_id, [])

    def kept_versions(self) -> list[Version]:
        return sorted((self.versions[i] for i in self.kept), key=lambda v: (v.name, v.version))

    def to_json(self) -> dict[str, Any]:
        return {
            "active": self.rules.active,
            "rules": self.rules.to_json(),
            "kept": [
                {"ref": v.ref, "digest": v.digest, "reasons": self.kept[v.id]}
                for v in self.kept_versions()
            ],
            "removed": [
                {"ref": v.ref, "digest": v.digest, "held_by": self.held_by(v.id)}
                for v in self.removed
            ],
        }


def ago(span: timedelta) -> str:
    """A span as a person reads it in a reason: 3d, 5h, 12m, 40s (rounded down)."""
    total = max(0, int(span.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            return f"{total // size}{unit}"
    return f"{total}s"


def utc(moment: datetime | str) -> datetime:
    """A catalog time as aware UTC: SQLite hands times back as text, without an offset
    when SQLAlchemy wrote them; PostgreSQL as datetimes."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def decide(
    versions: Iterable[Version],
    assignments: Iterable[Assigned],
    uses: Iterable[Use],
    rules: Rules,
    now: datetime,
    pins: Mapping[int, Sequence[str]] | None = None,
    revoked: Collection[int] = (),
) -> Decision:
    """Keep or remove every finished version, with each reason that keeps it.

    ``pins``: further reasons the caller found (a bake in progress mounts its layer).
    ``revoked``: versions revoked now, which a rollback steps over.
    """
    now = utc(now)
    decision = Decision(rules, now, versions={v.id: v for v in versions})
    known = decision.versions
    reasons: dict[int, list[str]] = defaultdict(list)

    def keep(image_id: int | None, reason: str) -> None:
        if image_id is not None and image_id in known and reason not in reasons[image_id]:
            reasons[image_id].append(reason)

    finished = [v for v in known.values() if not v.pending]
    if not rules.active:
        for version in finished:
            keep(version.id, NO_RULE)
    if rules.keep_last is not None and rules.keep_last > 0:
        by_name: dict[str, list[Version]] = defaultdict(list)
        for version in finished:
            by_name[version.name].append(version)
        for name, family in by_name.items():
            family.sort(key=lambda v: v.version, reverse=True)
            for version in family[: rules.keep_last]:
                keep(version.id, f"last {rules.keep_last} of {name}")
    if rules.keep_younger_than is not None:
        since = now - timedelta(seconds=seconds(rules.keep_younger_than))
        for version in finished:
            if utc(version.created) > since:
                keep(version.id, f"younger than {rules.keep_younger_than}")
    decision.held = _channels(assignments, rules, now, keep, revoked)
    for use in sorted(uses, key=lambda u: (u.machine, u.stopped)):
        keep(use.image_id, f"machine {use.machine} runs it" + (" (stopped)" if use.stopped else ""))
    for image_id, extra in sorted((pins or {}).items()):
        for reason in extra:
            keep(image_id, reason)
    for version in known.values():
        if version.pending and version.parent_id is not None:
            keep(version.parent_id, f"parent of {version.ref}, being baked")
    _ancestors(known, reasons)
    decision.kept = {
        v.id: reasons[v.id]
        for v in sorted(finished, key=lambda v: (v.name, v.version))
        if reasons.get(v.id)
    }
    decision.removed = sorted(
        (v for v in finished if v.id not in decision.kept), key=lambda v: (v.name, v.version)
    )
    return decision


def _channels(
    assignments: Iterable[Assigned],
    rules: Rules,
    now: datetime,
    keep: Callable[[int | None, str], None],
    revoked: Collection[int],
) -> dict[int, list[str]]:
    """A channel's head (its newest row) stays, and so does its rollback target; with
    ``keep_channel_history``, so does every version it held until less than that long
    ago. Returns the channels that ever held each version."""
    history: dict[tuple[str, str], list[Assigned]] = defaultdict(list)
    for row in assignments:
        history[(row.name, row.channel)].append(row)
    window = (
        timedelta(seconds=seconds(rules.keep_channel_history))
        if rules.keep_channel_history is not None
        else None
    )
    held: dict[int, list[str]] = defaultdict(list)
    for (name, channel), rows in sorted(history.items()):
        rows.sort(key=lambda r: r.id)
        head = rows[-1]
        keep(head.image_id, f"head of {name}:{channel}")
        for image_id in sorted({r.image_id for r in rows if r.image_id is not None}):
            held[image_id].append(f"{name}:{channel}")
        below = stack(rows)[:-1]
        target = next((i for i in reversed(below) if i is not None and i not in revoked), None)
        keep(target, f"rollback target of {name}:{channel}")
        if window is None:
            continue
        for row, following in pairwise(rows):
            until = utc(following.at)
            if row.image_id is not None and now - until <= window:
                keep(row.image_id, f"in {name}:{channel} until {ago(now - until)} ago")
    return dict(held)


def _ancestors(known: Mapping[int, Version], reasons: dict[int, list[str]]) -> None:
    """Every ancestor of a version kept for a reason of its own stays, naming (a few of)
    the versions it is an ancestor of."""
    of: dict[int, set[int]] = defaultdict(set)
    for image_id in [i for i, why in reasons.items() if why]:
        seen = {image_id}
        parent = known[image_id].parent_id
        while parent is not None and parent in known and parent not in seen:
            seen.add(parent)
            of[parent].add(image_id)
            parent = known[parent].parent_id
    for ancestor, descendants in of.items():
        refs = sorted((known[i] for i in descendants), key=lambda v: (v.name, v.version))
        for version in refs[:ANCESTOR_NAMES]:
            reasons[ancestor].append(f"ancestor of {version.ref}")
        if len(refs) > ANCESTOR_NAMES:
            reasons[ancestor].append(f"ancestor of {len(refs) - ANCESTOR_NAMES} more")
