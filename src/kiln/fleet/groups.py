"""A group kept at its size: what ``kiln up`` decides, and how it acts through a Driver.

The decision is a pure function of the group's spec, its members and the digest its image
ref names now (resolved once per command):

- a member that is not running has failed: it is removed and a new one takes its index;
- members beyond ``count`` go, newest first (the one started last, then the highest index);
- missing members start at the lowest free index, from the digest of now;
- members on another digest are left as they are: moving them is ``kiln rollout``'s job.

Removals come first (they free names and host ports), then starts; each new member must
pass its health check within ``update.healthy_deadline`` from its start. One that does not
is left running for a look, and named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.fleet.members import NOT_RUNNING, Driver, Member, member_name
from kiln.lifecycle.fleetpolicy import GroupSpec
from kiln.machines.volumes import escape

POLL = 0.1  # between two health checks of one new member

FAILED = "failed"
EXTRA = "extra"
MISSING = "missing"


def member_ports(spec: GroupSpec, index: int) -> tuple[str, ...]:
    """The ``kiln run --port`` values of member ``index``: host port FIRST+index-1 of each
    of the group's port ranges."""
    return tuple(span.for_member(index) for span in spec.port_ranges())


def member_volumes(state_root: Path, name: str, state_paths: Iterable[str]) -> tuple[str, ...]:
    """``--volume PATH=DIR`` for each of the image's state paths: DIR is
    ``state_root/<member>/<escaped path>`` (kiln.machines.volumes.escape), so a member that
    takes a removed one's place finds its data."""
    return tuple(f"{path}={state_root / name / escape(path)}" for path in sorted(set(state_paths)))


@dataclass(frozen=True)
class Start:
    index: int
    name: str
    digest: str
    reason: str  # missing, or failed (it takes a failed member's place)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "digest": self.digest,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Remove:
    member: Member
    reason: str  # failed (not running) or extra (beyond count)

    def to_json(self) -> dict[str, Any]:
        return {**self.member.to_json(), "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    group: str
    digest: str  # what the group's image ref names now: the image of new members
    count: int
    removals: tuple[Remove, ...]
    starts: tuple[Start, ...]
    kept: tuple[Member, ...]  # running members left as they are
    elsewhere: tuple[Member, ...]  # kept members on another digest (kiln rollout's)

    @property
    def empty(self) -> bool:
        return not self.removals and not self.starts


def _newest_first(members: Iterable[Member]) -> list[Member]:
    return sorted(members, key=lambda m: (m.created, m.index), reverse=True)


def plan(
    group: str,
    spec: GroupSpec,
    members: Sequence[Member],
    digest: str,
    taken: Iterable[int] = (),
) -> Plan:
    """What ``kiln up`` does to ``group``: ``members`` as the Driver lists them, ``digest``
    what spec.image names now, ``taken`` indices whose names other machines hold."""
    failed = [m for m in members if not m.running]
    running = [m for m in members if m.running]
    extras = _newest_first(running)[: max(len(running) - spec.count, 0)]
    gone = {m.name for m in extras}
    kept = tuple(m for m in sorted(running, key=lambda m: m.index) if m.name not in gone)
    removals = [Remove(m, FAILED) for m in sorted(failed, key=lambda m: m.index)]
    removals += [Remove(m, EXTRA) for m in extras]
    busy = {m.index for m in kept} | set(taken)
    failed_at = {m.index for m in failed}
    starts: list[Start] = []
    index = 0
    while len(kept) + len(starts) < spec.count:
        index += 1
        if index in busy:
            continue
        reason = FAILED if index in failed_at else MISSING
        starts.append(Start(index, member_name(group, index), digest, reason))
    elsewhere = tuple(m for m in kept if m.digest != digest)
    return Plan(group, digest, spec.count, tuple(removals), tuple(starts), kept, elsewhere)


@dataclass
class Started:
    member: Member
    healthy: bool = False
    detail: str = ""
    seconds: float = 0.0  # from its start to its first passed check (or the deadline)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.member.to_json(),
            "healthy": self.healthy,
            "health": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class NotStarted:
    start: Start
    error: str
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.start.to_json(), "error": self.error, "hint": self.hint}


@dataclass
class Outcome:
    plan: Plan
    removed: list[Remove] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)
    not_started: list[NotStarted] = field(default_factory=list)

    @property
    def unhealthy(self) -> list[Started]:
        return [s for s in self.started if not s.healthy]

    @property
    def ok(self) -> bool:
        return not self.not_started and not self.unhealthy


def apply(
    driver: Driver,
    spec: GroupSpec,
    decided: Plan,
    log: Callable[[str], None] = lambda _message: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Act on the plan: removals, then starts, then wait for each new member's health
    check (all at once, each with its own deadline from its start). A start that fails
    stops the starts after it (they would fail alike); a removal that fails raises."""
    outcome = Outcome(decided)
    for removal in decided.removals:
        log(f"removing {removal.member.name} ({removal.reason})")
        driver.remove(removal.member)
        outcome.removed.append(removal)
    begun: list[tuple[Started, float]] = []
    for start in decided.starts:
        log(f"starting {start.name}")
        at = clock()
        try:
            member = driver.start(decided.group, spec, start.index, start.digest, dict(spec.config))
        except KilnError as exc:
            outcome.not_started.append(NotStarted(start, exc.message, exc.hint))
            break
        started = Started(member)
        outcome.started.append(started)
        begun.append((started, at))
    _wait_healthy(driver, begun, spec.update.seconds("healthy_deadline"), log, clock, sleep)
    return outcome


def _wait_healthy(
    driver: Driver,
    begun: list[tuple[Started, float]],
    deadline: float,
    log: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    waiting = list(begun)
    while waiting:
        for item in list(waiting):
            started, at = item
            ok, detail = driver.healthy(started.member)
            started.detail = detail
            started.seconds = clock() - at
            if ok:
                started.healthy = True
                log(f"{started.member.name} is healthy: {detail}")
                waiting.remove(item)
            elif detail == NOT_RUNNING or started.seconds >= deadline:
                waiting.remove(item)
        if waiting:
            sleep(POLL)
