"""kiln rollout's decisions (kiln.fleet.rollout_plan, kiln.fleet.rollout) against a Driver
that keeps its members in memory, on a clock that moves only when the run sleeps: healthy
capacity in every step (a rollback too), members on the target skipped, the canary gate,
the order of a surge, a deadline for a member that never boots, and a run cut short at
every write and every act, continued with no member touched twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kiln.catalog import Catalog
from kiln.catalog import rollouts as rows
from kiln.catalog.rollouts import Rollout, Step
from kiln.errors import BadInput, KilnError
from kiln.fleet import rollout_plan
from kiln.fleet.members import NOT_RUNNING, Member, member_name
from kiln.fleet.rollout import Run
from kiln.lifecycle.fleetpolicy import GroupSpec, UpdateSettings

OLD, NEW, BAD, DEAD, NEWER = (f"sha256:{c * 64}" for c in "abcde")
GROUP = "app"


class Killed(BaseException):
    """The process dies here (SIGKILL): nothing after it runs."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Members:
    """The host's members in memory. BAD never passes its check, DEAD never runs; a
    member passes ``warm`` seconds after its start. It refuses to start a name that exists
    or remove one that does not (a member touched twice), and keeps the fewest healthy
    members after each act."""

    def __init__(self, clock: Clock, count: int, digest: str = OLD, warm: float = 0.5) -> None:
        self.clock = clock
        self.warm = warm
        self.here: dict[str, tuple[Member, float]] = {}
        self.ops: list[tuple[str, str, str]] = []
        self.low: int | None = None
        self.kill_at: int | None = None
        self.moves: list[Any] = []  # called before each start (a channel moving)
        for index in range(1, count + 1):
            self._add(index, digest, {"mode": "a"}, at=-100.0)

    def _add(self, index: int, digest: str, config: dict[str, str], at: float) -> Member:
        name = member_name(GROUP, index)
        state = "stopped" if digest == DEAD else "running"
        member = Member(name, GROUP, index, f"app:{digest[7]}", digest, state, config=config)
        self.here[name] = (member, at)
        return member

    def _passes(self, name: str) -> bool:
        member, at = self.here[name]
        return member.digest not in (BAD, DEAD) and self.clock.now - at >= self.warm

    def _act(self, op: str, name: str, digest: str) -> None:
        if self.kill_at is not None and len(self.ops) + 1 == self.kill_at:
            raise Killed()
        self.ops.append((op, name, digest))

    def _count(self) -> None:
        healthy = sum(self._passes(name) for name in self.here)
        self.low = healthy if self.low is None else min(self.low, healthy)

    def members(self, group: str) -> list[Member]:
        return sorted((m for m, _at in self.here.values()), key=lambda m: m.index)

    def start(
        self, group: str, spec: GroupSpec, index: int, digest: str, config: dict[str, str]
    ) -> Member:
        for move in self.moves:
            move()
        name = member_name(group, index)
        assert name not in self.here, f"{name} started while it exists"
        self._count()
        self._act("start", name, digest)
        member = self._add(index, digest, dict(config), at=self.clock.now)
        self._count()
        return member

    def healthy(self, member: Member) -> tuple[bool, str]:
        found = self.here.get(member.name)
        if found is None or found[0].digest == DEAD:
            return False, NOT_RUNNING
        self._count()
        return (True, "ok") if self._passes(member.name) else (False, "check failed")

    def remove(self, member: Member) -> None:
        assert member.name in self.here, f"{member.name} removed twice"
        self._act("remove", member.name, member.digest)
        del self.here[member.name]
        self._count()

    def digests(self) -> list[str]:
        return [m.digest for m in self.members(GROUP)]


class Memory:
    """A rollout's journal in memory; ``kill_at`` dies before the n-th write lands."""

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.writes = 0
        self.kill_at: int | None = None

    def _write(self) -> None:
        self.writes += 1
        if self.kill_at is not None and self.writes == self.kill_at:
            raise Killed()

    def load(self) -> Rollout:
        return self.rollout

    def state(self) -> str:
        return self.rollout.state

    def _steps(self, steps: Sequence[Step]) -> None:
        self.rollout = dataclasses.replace(self.rollout, steps=tuple(steps))

    def mark(self, position: int, state: str, detail: str = "") -> None:
        self._write()
        self._steps(
            [
                dataclasses.replace(s, state=state, detail=detail) if s.position == position else s
                for s in self.rollout.steps
            ]
        )

    def set_state(
        self, state: str, reason: str | None = None, promoted: bool | None = None
    ) -> None:
        self._write()
        changes: dict[str, Any] = {"state": state}
        if reason is not None:
            changes["reason"] = reason
        if promoted is not None:
            changes["promoted"] = promoted
        self.rollout = dataclasses.replace(self.rollout, **changes)

    def replan(self, state: str, reason: str, steps: Sequence[Step]) -> None:
        self._write()
        kept = [
            dataclasses.replace(s, state=rows.SKIPPED)
            if s.state in (rows.PLANNED, rows.INTENT)
            else s
            for s in self.rollout.steps
        ]
        self._steps([*kept, *steps])
        self.rollout = dataclasses.replace(self.rollout, state=state, reason=reason)

    def lowest(self, healthy: int) -> None:
        self._write()
        self.rollout = dataclasses.replace(self.rollout, lowest_healthy=healthy)

    def stable(self) -> None:
        self._write()
        self.rollout = dataclasses.replace(self.rollout, stable_at="now")


def spec(count: int = 4, **update: Any) -> GroupSpec:
    settings = {"min_healthy_time": "1s", "healthy_deadline": "5s", **update}
    return GroupSpec(image="app:prod", count=count, update=UpdateSettings(**settings))


def begin(
    host: Members, group: GroupSpec, target: str = NEW, config: dict[str, str] | None = None
) -> Memory:
    config = {"mode": "a"} if config is None else config
    steps = rollout_plan.forward(GROUP, host.members(GROUP), target, config, group.update)
    rollout = Rollout(
        id=1,
        group=GROUP,
        target=target,
        target_ref="app:2",
        named="app:prod",
        config=config,
        settings=group.update.model_dump(),
        count=group.count,
        state=rows.RUNNING,
        reason="",
        promoted=False,
        lowest_healthy=None,
        created=None,
        updated=None,
        finished=None,
        stable_at=None,
        actor="test",
        steps=tuple(steps),
    )
    return Memory(rollout)


def run(host: Members, journal: Memory, group: GroupSpec, promote: bool = False) -> str:
    ran = Run(host, journal, group, promote=promote, clock=host.clock, sleep=host.clock.sleep)
    return ran.run().state


@pytest.mark.parametrize(
    ("surge", "unavailable", "canary"), [(1, 1, 1), (0, 1, 0), (0, 2, 1), (2, 0, 0), (1, 2, 2)]
)
def test_capacity_never_drops_below_count_minus_max_unavailable(
    surge: int, unavailable: int, canary: int
) -> None:
    group = spec(max_surge=surge, max_unavailable=unavailable, canary=canary, auto_promote=True)
    host = Members(Clock(), 5)
    journal = begin(host, group)
    assert run(host, journal, group) == rows.DONE
    assert host.digests() == [NEW] * 5
    assert host.low is not None and host.low >= 5 - unavailable
    assert journal.rollout.lowest_healthy is not None
    assert journal.rollout.lowest_healthy >= 5 - unavailable
    assert journal.rollout.stable_at is not None


@pytest.mark.parametrize(("surge", "unavailable"), [(1, 1), (0, 1), (0, 2), (2, 0)])
def test_a_rollback_keeps_the_capacity_and_brings_each_member_back(
    surge: int, unavailable: int
) -> None:
    """Members 1-3 move to NEW; the fourth's replacement never passes: everything goes
    back to the digest and config it had, never below count - max_unavailable."""
    group = spec(max_surge=surge, max_unavailable=unavailable, auto_promote=True)
    host = Members(Clock(), 4)
    journal = begin(host, group, config={"mode": "b"})
    steps = list(journal.rollout.steps)
    last = max(s.position for s in steps if s.action == "start")
    steps = [dataclasses.replace(s, digest=BAD) if s.position == last else s for s in steps]
    journal.rollout = dataclasses.replace(journal.rollout, steps=tuple(steps))
    assert run(host, journal, group) == rows.ROLLED_BACK
    assert "not healthy" in journal.rollout.reason
    assert host.digests() == [OLD] * 4
    assert all(m.config == {"mode": "a"} for m in host.members(GROUP))
    assert host.low is not None and host.low >= 4 - unavailable
    rolled = [s for s in journal.rollout.steps if s.phase == rows.ROLLBACK]
    assert rolled and all(s.state == rows.STEP_DONE for s in rolled)


def test_members_on_the_target_are_skipped_and_a_second_run_is_a_no_op() -> None:
    group = spec(max_surge=1, max_unavailable=1)
    host = Members(Clock(), 4)
    member, at = host.here["app-2"]
    host.here["app-2"] = (dataclasses.replace(member, digest=NEW), at)
    journal = begin(host, group)
    started = [s.replaces for s in journal.rollout.steps if s.action == "start"]
    assert started == ["app-1", "app-3", "app-4"]
    assert run(host, journal, group) == rows.DONE
    assert rollout_plan.forward(GROUP, host.members(GROUP), NEW, {"mode": "a"}, group.update) == []
    # a config change is a move, never an edit of a running member
    moved = rollout_plan.forward(GROUP, host.members(GROUP), NEW, {"mode": "c"}, group.update)
    assert len([s for s in moved if s.action == "start"]) == 4


def test_the_canary_waits_for_promotion() -> None:
    group = spec(max_surge=1, max_unavailable=1, canary=1)
    host = Members(Clock(), 4)
    journal = begin(host, group)
    assert run(host, journal, group) == rows.PAUSED_FOR_PROMOTION
    assert host.digests().count(NEW) == 1 and len(host.here) == 4
    assert run(host, journal, group) == rows.PAUSED_FOR_PROMOTION  # --resume is no promotion
    assert host.digests().count(NEW) == 1
    assert run(host, journal, group, promote=True) == rows.DONE
    assert host.digests() == [NEW] * 4 and journal.rollout.promoted


def test_a_surge_starts_the_new_member_at_the_next_free_index_before_the_old_goes() -> None:
    group = spec(max_surge=1, max_unavailable=0)
    host = Members(Clock(), 3)
    journal = begin(host, group)
    assert run(host, journal, group) == rows.DONE
    assert host.ops == [
        ("start", "app-4", NEW),
        ("remove", "app-1", OLD),
        ("start", "app-1", NEW),
        ("remove", "app-2", OLD),
        ("start", "app-2", NEW),
        ("remove", "app-3", OLD),
    ]
    assert host.low == 3


def test_the_healthy_deadline_fires_for_a_member_that_never_boots() -> None:
    group = spec(max_surge=0, max_unavailable=1, healthy_deadline="3s")
    clock = Clock()
    host = Members(clock, 2)
    journal = begin(host, group, target=DEAD)
    assert run(host, journal, group) == rows.ROLLED_BACK
    assert "healthy_deadline 3s" in journal.rollout.reason
    assert NOT_RUNNING in journal.rollout.reason
    assert 3.0 <= clock.now < 5.0  # failed at its deadline, then rolled back at once
    assert host.digests() == [OLD, OLD]


def test_on_failure_pause_stops_and_resume_tries_the_member_again() -> None:
    group = spec(max_surge=1, max_unavailable=0, on_failure="pause")
    host = Members(Clock(), 2)
    journal = begin(host, group, target=BAD)
    assert run(host, journal, group) == rows.PAUSED
    assert host.ops == [("start", "app-3", BAD)]
    assert run(host, journal, group) == rows.PAUSED
    assert host.ops == [("start", "app-3", BAD)]  # checked again, not started again


def test_a_start_that_fails_rolls_back() -> None:
    class Refusing(Members):
        def start(
            self, group: str, spec: GroupSpec, index: int, digest: str, config: dict[str, str]
        ) -> Member:
            if digest == NEWER:
                raise KilnError("no room")
            return super().start(group, spec, index, digest, config)

    group = spec(max_surge=0, max_unavailable=1, auto_promote=True)
    host = Refusing(Clock(), 3)
    journal = begin(host, group, target=NEWER)
    assert run(host, journal, group) == rows.ROLLED_BACK
    assert "did not start: no room" in journal.rollout.reason
    assert host.digests() == [OLD] * 3 and host.low == 2


def test_a_channel_moving_mid_rollout_changes_nothing() -> None:
    group = spec(max_surge=1, max_unavailable=1, auto_promote=True, canary=1)
    host = Members(Clock(), 4)
    channel = {"app:prod": NEW}
    journal = begin(host, group, target=channel["app:prod"])
    host.moves.append(lambda: channel.update({"app:prod": NEWER}))
    assert run(host, journal, group) == rows.DONE
    assert {digest for op, _name, digest in host.ops if op == "start"} == {NEW}
    assert journal.rollout.target == NEW


def uninterrupted(group: GroupSpec, target: str) -> tuple[list[tuple[str, str, str]], int, int]:
    host = Members(Clock(), 4)
    journal = begin(host, group, target=target)
    run(host, journal, group)
    return host.ops, journal.writes, len(host.ops)


@pytest.mark.parametrize("target", [NEW, BAD])
def test_a_run_cut_short_at_any_point_continues_touching_no_member_twice(target: str) -> None:
    """Killed before each write of the journal and before each act on a member, then
    continued (--resume): the members see exactly the acts of a run never cut short."""
    group = spec(max_surge=1, max_unavailable=1, canary=1, auto_promote=True)
    ops, writes, acts = uninterrupted(group, target)
    cuts = [("write", n) for n in range(1, writes + 1)] + [("act", n) for n in range(1, acts + 1)]
    for where, n in cuts:
        host = Members(Clock(), 4)
        journal = begin(host, group, target=target)
        if where == "write":
            journal.kill_at = n
        else:
            host.kill_at = n
        with pytest.raises(Killed):
            run(host, journal, group)
        journal.kill_at = host.kill_at = None
        final = run(host, journal, group)
        assert host.ops == ops, (where, n)
        assert final == (rows.DONE if target == NEW else rows.ROLLED_BACK), (where, n)
        assert host.digests() == [target if target == NEW else OLD] * 4


def test_the_catalog_keeps_a_rollout_and_refuses_a_second(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    group = spec(max_surge=1, max_unavailable=1, canary=1, auto_promote=True)
    host = Members(Clock(), 4)
    steps = rollout_plan.forward(GROUP, host.members(GROUP), NEW, {"mode": "a"}, group.update)
    made = rows.create(
        catalog, GROUP, NEW, "app:2", "app:prod", {"mode": "a"}, group.update.model_dump(), 4, steps
    )
    with pytest.raises(BadInput, match=f"rollout {made.id} of app to app:2"):
        rows.create(catalog, GROUP, NEW, "app:2", "app:prod", {}, {}, 4, steps)
    journal = rows.Journal(catalog, made.id)
    journal.set_state(rows.RUNNING)
    ran = Run(host, journal, group, clock=host.clock, sleep=host.clock.sleep)
    assert ran.run().state == rows.DONE
    done = rows.latest(catalog, GROUP)
    assert done is not None and done.state == rows.DONE and done.finished is not None
    assert all(s.state == rows.STEP_DONE for s in done.steps)
    assert rows.stable(catalog, GROUP) == NEW and rows.unfinished(catalog, GROUP) is None
    assert [r.id for r in rows.history(catalog, GROUP)] == [made.id]
    assert done.lowest_healthy == 3  # one member replaced in place at a time
    catalog.close()


def test_an_abort_stops_the_run_after_its_current_step() -> None:
    group = spec(max_surge=0, max_unavailable=1, auto_promote=True)
    host = Members(Clock(), 3)
    journal = begin(host, group)
    host.moves.append(lambda: journal.set_state(rows.ABORTED, reason="aborted by test"))
    assert run(host, journal, group) == rows.ABORTED
    assert [op for op, _name, _digest in host.ops] == ["remove", "start"]
    assert journal.rollout.reason == "aborted by test"
