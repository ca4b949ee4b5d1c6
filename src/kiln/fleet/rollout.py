"""A rollout run: the steps of its plan (kiln.fleet.rollout_plan) acted on one by one
through a Driver, each written to the rollout's journal before it acts and after.

- ``start`` boots the new member; ``remove`` removes one; ``wait`` waits until each new
  member of a wave has passed its health check continuously for ``min_healthy_time``,
  within ``healthy_deadline`` of its start (a member that never boots fails it too);
  ``promote`` pauses the rollout (``paused-for-promotion``) unless ``auto_promote`` or
  ``--promote``; ``bake`` watches the group for ``bake_time`` (a failed check fails the
  rollout), then records the target as the group's stable digest.
- The forward steps (not bake) must end within ``progress_deadline`` of the run's start.
- A failure either pauses the rollout (``on_failure = "pause"``) or replaces the plan's
  remaining steps by a rollback (kiln.fleet.rollout_plan.rollback), run at once.
- A step found in ``intent`` was cut short: a start whose member exists is checked, not
  started again; a removal whose member is gone is done. No member is touched twice.
- Every member's check is sampled while the run waits; the fewest healthy members seen
  is recorded.

The deadlines of a run that continues (``--resume``) count from that run's own start:
a member found running is given its healthy_deadline again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kiln.catalog.rollouts import (
    ABORTED,
    DONE,
    FAILED,
    FORWARD,
    INTENT,
    PAUSED,
    PAUSED_FOR_PROMOTION,
    PLANNED,
    ROLLBACK,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    STEP_DONE,
    STEP_FAILED,
    Rollout,
    Step,
)
from kiln.errors import KilnError
from kiln.fleet import rollout_plan
from kiln.fleet.members import Driver, Member
from kiln.fleet.rollout_plan import BAKE, PROMOTE, REMOVE, START, WAIT
from kiln.lifecycle.fleetpolicy import GroupSpec, UpdateSettings

POLL = 0.1  # between two rounds of health checks
ABORT_EVERY = 1.0  # how often a wait asks whether the rollout was aborted


class Journal(Protocol):
    """One rollout's rows (kiln.catalog.rollouts.Journal; a test keeps them in memory)."""

    def load(self) -> Rollout: ...

    def state(self) -> str: ...

    def mark(self, position: int, state: str, detail: str = "") -> None: ...

    def set_state(
        self, state: str, reason: str | None = None, promoted: bool | None = None
    ) -> None: ...

    def replan(self, state: str, reason: str, steps: Sequence[Step]) -> None: ...

    def lowest(self, healthy: int) -> None: ...

    def stable(self) -> None: ...


class Failure(Exception):
    """A step failed: the rollout pauses or rolls back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Aborted(Exception):
    """``kiln rollout abort`` stopped the rollout while this run held it."""


@dataclass
class Outcome:
    rollout: Rollout  # as the run left it
    acted: int = 0  # steps this run acted on
    log: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.rollout.state

    @property
    def ok(self) -> bool:
        return self.rollout.state in (DONE, PAUSED_FOR_PROMOTION)


class Run:
    """One run of a rollout (a new one, or one continued) on ``driver`` and ``journal``."""

    def __init__(
        self,
        driver: Driver,
        journal: Journal,
        spec: GroupSpec,
        *,
        promote: bool = False,
        taken: Sequence[int] = (),
        log: Callable[[str], None] = lambda _message: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.driver = driver
        self.journal = journal
        self.spec = spec
        self.promote = promote
        self.taken = tuple(taken)
        self._log = log
        self.clock = clock
        self.sleep = sleep
        self.rollout = journal.load()
        self.group = self.rollout.group
        self.settings = UpdateSettings(**self.rollout.settings)
        self.members: dict[str, Member] = {}
        self.started_at: dict[str, float] = {}
        self.begun = 0.0
        self.lowest: int | None = self.rollout.lowest_healthy
        self.acted = 0
        self.lines: list[str] = []
        self._asked = 0.0

    def log(self, message: str) -> None:
        self.lines.append(message)
        self._log(message)

    # --- the run ---

    def run(self) -> Outcome:
        self.begun = self.clock()
        self._asked = self.begun
        self._refresh()
        self._continue()
        try:
            self._sample()
            unhandled = self._unhandled()
            if unhandled is not None and not self._failed(unhandled, unhandled.detail):
                return self._outcome()
            while True:
                self._check_abort()
                steps = self._next()
                if not steps:
                    break
                try:
                    if not self._act(steps):
                        return self._outcome()
                except Failure as failure:
                    if not self._failed(steps[0], failure.reason):
                        return self._outcome()
        except Aborted:
            self.log(f"rollout {self.rollout.id} was aborted")
            return self._outcome()
        state = self.journal.state()
        self.journal.set_state(ROLLED_BACK if state == ROLLING_BACK else DONE)
        return self._outcome()

    def _continue(self) -> None:
        """A paused rollout runs again: its failed steps are tried again (a start that
        failed left nothing behind; a wait checks the member again)."""
        state = self.rollout.state
        if state == PAUSED:
            for step in self.rollout.steps:
                if step.state == STEP_FAILED and step.phase == FORWARD:
                    self.journal.mark(step.position, PLANNED, "")
            self.journal.set_state(RUNNING, reason="")
        elif state == PAUSED_FOR_PROMOTION:
            self.journal.set_state(RUNNING, promoted=True if self.promote else None)
        self.rollout = self.journal.load()

    def _unhandled(self) -> Step | None:
        """A step that failed in a run cut short before it paused or rolled back."""
        if self.rollout.state not in (RUNNING, ROLLING_BACK):
            return None
        phase = FORWARD if self.rollout.state == RUNNING else ROLLBACK
        failed = [s for s in self.rollout.steps if s.state == STEP_FAILED and s.phase == phase]
        return failed[0] if failed else None

    def _outcome(self) -> Outcome:
        self.rollout = self.journal.load()
        return Outcome(self.rollout, self.acted, self.lines)

    def _next(self) -> list[Step]:
        """The next step not done (with the waits that follow a wait: they run at once)."""
        self.rollout = self.journal.load()
        todo = [s for s in self.rollout.steps if s.state in (PLANNED, INTENT)]
        if not todo:
            return []
        first = todo[0]
        if first.action != WAIT:
            return [first]
        batch = []
        for step in todo:
            if step.action != WAIT or step.phase != first.phase:
                break
            batch.append(step)
        return batch

    def _act(self, steps: list[Step]) -> bool:
        """Act on the step (or waits); False when the run stops here (a pause)."""
        step = steps[0]
        if step.phase == FORWARD and step.action != BAKE:
            self._check_progress()
        if step.action == START:
            self._start(step)
        elif step.action == REMOVE:
            self._remove(step)
        elif step.action == WAIT:
            self._wait(steps)
        elif step.action == PROMOTE:
            return self._gate(step)
        elif step.action == BAKE:
            self._bake(step)
        self.acted += len(steps)
        return True

    def _failed(self, step: Step, reason: str) -> bool:
        """After a failure: False when the run stops (paused, or the rollback failed)."""
        self.log(f"rollout {self.rollout.id} failed: {reason}")
        if step.phase == ROLLBACK:
            self.journal.set_state(FAILED, reason=f"the rollback failed: {reason}")
            return False
        if self.settings.on_failure == "pause":
            self.journal.set_state(PAUSED, reason=reason)
            return False
        self._refresh()
        plan = rollout_plan.rollback(
            self.group,
            self.journal.load().steps,
            list(self.members.values()),
            self.settings,
            self.taken,
        )
        self.journal.replan(ROLLING_BACK, reason, plan)
        self.log(f"rolling back {self.group} at once ({len(plan)} steps)")
        return True

    # --- steps ---

    def _refresh(self) -> None:
        self.members = {m.name: m for m in self.driver.members(self.group)}

    def _start(self, step: Step) -> None:
        if step.state == INTENT:
            self._refresh()
            found = self.members.get(step.member)
            if found is not None:
                if found.digest != step.digest:
                    raise KilnError(
                        f"{step.member} runs {found.digest}, not {step.digest} as rollout "
                        f"{self.rollout.id} started it: something else changed group "
                        f"{self.group}",
                        hint=f"look at it with kiln ps; 'kiln rollout abort {self.group}' "
                        "ends the rollout",
                    )
                self.log(f"{step.member} was started already: checking it")
                self.started_at[step.member] = self.clock()
                self.journal.mark(step.position, STEP_DONE, "found started")
                return
        self.journal.mark(step.position, INTENT)
        self.log(f"starting {step.member} from {step.digest[:19]} (in place of {step.replaces})")
        at = self.clock()
        try:
            member = self.driver.start(self.group, self.spec, step.index, step.digest, step.config)
        except KilnError as exc:
            self.journal.mark(step.position, STEP_FAILED, exc.message)
            raise Failure(f"{step.member} did not start: {exc.message}") from None
        self.members[member.name] = member
        self.started_at[member.name] = at
        self.journal.mark(step.position, STEP_DONE)

    def _remove(self, step: Step) -> None:
        if step.state == INTENT or step.member not in self.members:
            self._refresh()
        member = self.members.get(step.member)
        if member is None:
            self.journal.mark(step.position, STEP_DONE, "gone already")
            return
        self.journal.mark(step.position, INTENT)
        self.log(f"removing {step.member}")
        self.driver.remove(member)
        del self.members[step.member]
        self.journal.mark(step.position, STEP_DONE)

    def _gate(self, step: Step) -> bool:
        if self.settings.auto_promote or self.promote or self.rollout.promoted:
            self.journal.mark(step.position, STEP_DONE, "promoted")
            self.log("canaries are healthy: promoted")
            return True
        self.journal.set_state(PAUSED_FOR_PROMOTION)
        self.log(
            f"canaries are healthy; the rollout waits: 'kiln rollout {self.group} --promote' "
            "moves the rest"
        )
        return False

    def _wait(self, steps: list[Step]) -> None:
        deadline = self.settings.seconds("healthy_deadline")
        least = self.settings.seconds("min_healthy_time")
        pending = {s.member: s for s in steps}
        for step in steps:
            if step.state == PLANNED:
                self.journal.mark(step.position, INTENT)
        now = self.clock()
        began = {name: self.started_at.get(name, now) for name in pending}
        since: dict[str, float] = {}
        while pending:
            results = self._sample()
            now = self.clock()
            for name, step in list(pending.items()):
                ok, detail = results.get(name, (False, "not there"))
                if ok:
                    since.setdefault(name, now)
                    if now - since[name] >= least:
                        self.log(f"{name} is healthy: {detail}")
                        self.journal.mark(step.position, STEP_DONE, detail)
                        del pending[name]
                    continue
                since.pop(name, None)
                if now - began[name] >= deadline:
                    why = (
                        f"{name} was not healthy for {least}s within healthy_deadline "
                        f"{deadline}s of its start: {detail}"
                    )
                    self.journal.mark(step.position, STEP_FAILED, why)
                    raise Failure(why)
            if pending:
                if steps[0].phase == FORWARD:
                    self._check_progress()
                self._check_abort(every=ABORT_EVERY)
                self.sleep(POLL)

    def _bake(self, step: Step) -> None:
        self.journal.mark(step.position, INTENT)
        length = self.settings.seconds("bake_time")
        start = self.clock()
        while self.clock() - start < length:
            results = self._sample()
            for name, member in self.members.items():
                ok, detail = results[name]
                if member.digest == step.digest and not ok:
                    why = f"{name} failed its health check during bake_time: {detail}"
                    self.journal.mark(step.position, STEP_FAILED, why)
                    raise Failure(why)
            self._check_abort(every=ABORT_EVERY)
            self.sleep(POLL)
        self.journal.stable()
        self.journal.mark(step.position, STEP_DONE, "stable")
        self.log(f"{self.group} is stable on {self.rollout.target_ref}")

    # --- checks ---

    def _sample(self) -> dict[str, tuple[bool, str]]:
        """Every member's health check now; the fewest healthy is recorded."""
        results = {name: self.driver.healthy(m) for name, m in self.members.items()}
        healthy = sum(ok for ok, _detail in results.values())
        if self.lowest is None or healthy < self.lowest:
            self.lowest = healthy
            self.journal.lowest(healthy)
        return results

    def _check_progress(self) -> None:
        limit = self.settings.seconds("progress_deadline")
        if self.clock() - self.begun > limit:
            raise Failure(f"the rollout did not finish within progress_deadline {limit}s")

    def _check_abort(self, every: float = 0.0) -> None:
        now = self.clock()
        if every and now - self._asked < every:
            return
        self._asked = now
        if self.journal.state() == ABORTED:
            raise Aborted()
