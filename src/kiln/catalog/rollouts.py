"""The rows of ``kiln rollout``: a ``rollouts`` row per rollout of a group and a
``rollout_steps`` row per step of its plan, and the questions asked of them.

A step is written before it acts (``intent``) and after (``done``), each in its own
transaction, so a rollout cut short (a crash, SIGKILL) is continued by ``kiln rollout
GROUP --resume`` from the step it stopped at. A group has at most one unfinished rollout:
``create`` refuses a second in the transaction that would write it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kiln.errors import BadInput, NotFound
from kiln.times import iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from kiln.catalog.db import Catalog
    from kiln.catalog.models import Rollout as RolloutModel
    from kiln.catalog.models import RolloutStep

# a rollout's states
RUNNING = "running"
PAUSED_FOR_PROMOTION = "paused-for-promotion"
PAUSED = "paused"  # a failure, with on_failure = "pause"
ROLLING_BACK = "rolling-back"
DONE = "done"
ROLLED_BACK = "rolled-back"
FAILED = "failed"  # the rollback itself failed
ABORTED = "aborted"
UNFINISHED = (RUNNING, PAUSED_FOR_PROMOTION, PAUSED, ROLLING_BACK)

# a step's states
PLANNED = "planned"
INTENT = "intent"
STEP_DONE = "done"
STEP_FAILED = "failed"
SKIPPED = "skipped"

FORWARD, ROLLBACK = "forward", "rollback"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Step:
    """One step of a plan. ``start`` boots ``member`` (at ``index``) from ``digest`` with
    ``config``, in the place of ``replaces``, which ran ``from_digest`` with
    ``from_config`` (what a rollback brings back); ``remove`` removes ``member``;
    ``wait`` waits for its health; ``promote`` is the canary gate; ``bake`` watches the
    group for bake_time, then records the digest as stable."""

    position: int
    phase: str
    action: str
    member: str = ""
    index: int = 0
    digest: str = ""
    config: dict[str, str] = field(default_factory=dict)
    replaces: str = ""
    from_digest: str = ""
    from_config: dict[str, str] = field(default_factory=dict)
    state: str = PLANNED
    detail: str = ""
    updated: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "phase": self.phase,
            "action": self.action,
            "member": self.member or None,
            "index": self.index or None,
            "digest": self.digest or None,
            "config": dict(self.config),
            "replaces": self.replaces or None,
            "from_digest": self.from_digest or None,
            "state": self.state,
            "detail": self.detail,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Rollout:
    id: int
    group: str
    target: str
    target_ref: str
    named: str
    config: dict[str, str]
    settings: dict[str, Any]
    count: int
    state: str
    reason: str
    promoted: bool
    lowest_healthy: int | None
    created: str | None
    updated: str | None
    finished: str | None
    stable_at: str | None
    actor: str
    steps: tuple[Step, ...] = ()

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED

    def to_json(self, steps: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "target": self.target,
            "target_ref": self.target_ref,
            "named": self.named,
            "config": dict(self.config),
            "settings": dict(self.settings),
            "count": self.count,
            "state": self.state,
            "reason": self.reason or None,
            "promoted": self.promoted,
            "lowest_healthy": self.lowest_healthy,
            "created": self.created,
            "updated": self.updated,
            "finished": self.finished,
            "stable": self.stable_at is not None,
            "stable_at": self.stable_at,
            "actor": self.actor,
        }
        if steps:
            data["steps"] = [step.to_json() for step in self.steps]
        else:
            data["steps_done"] = sum(s.state == STEP_DONE for s in self.steps)
            data["steps_total"] = len(self.steps)
        return data


def _step(row: RolloutStep) -> Step:
    return Step(
        position=row.position,
        phase=row.phase,
        action=row.action,
        member=row.member,
        index=row.index,
        digest=row.digest,
        config=dict(json.loads(row.config)),
        replaces=row.replaces,
        from_digest=row.from_digest,
        from_config=dict(json.loads(row.from_config)),
        state=row.state,
        detail=row.detail,
        updated=iso(row.updated),
    )


def _rollout(row: RolloutModel) -> Rollout:
    return Rollout(
        id=row.id,
        group=row.group_name,
        target=row.target,
        target_ref=row.target_ref,
        named=row.named,
        config=dict(json.loads(row.config)),
        settings=dict(json.loads(row.settings)),
        count=row.count,
        state=row.state,
        reason=row.reason,
        promoted=row.promoted,
        lowest_healthy=row.lowest_healthy,
        created=iso(row.created),
        updated=iso(row.updated),
        finished=iso(row.finished),
        stable_at=iso(row.stable_at),
        actor=row.actor,
        steps=tuple(_step(step) for step in row.steps),
    )


def _add_steps(rollout: RolloutModel, steps: Sequence[Step], now: datetime) -> None:
    from kiln.catalog.models import RolloutStep

    for step in steps:
        rollout.steps.append(
            RolloutStep(
                position=step.position,
                phase=step.phase,
                action=step.action,
                member=step.member,
                index=step.index,
                digest=step.digest,
                config=json.dumps(step.config, sort_keys=True),
                replaces=step.replaces,
                from_digest=step.from_digest,
                from_config=json.dumps(step.from_config, sort_keys=True),
                state=step.state,
                detail=step.detail,
                updated=now,
            )
        )


def _unfinished(session: Session, group: str) -> RolloutModel | None:
    from kiln.catalog.models import Rollout as RolloutModel

    return (
        session.query(RolloutModel)
        .filter(RolloutModel.group_name == group, RolloutModel.state.in_(UNFINISHED))
        .order_by(RolloutModel.id.desc())
        .first()
    )


def describe(rollout: Rollout) -> str:
    """How a message names a rollout: its number, target and state."""
    return f"rollout {rollout.id} of {rollout.group} to {rollout.target_ref} ({rollout.state})"


def refusal(found: Rollout) -> BadInput:
    """Why a second rollout of a group is refused while ``found`` is unfinished."""
    return BadInput(
        f"group {found.group} already has an unfinished {describe(found)}",
        hint=f"continue it with 'kiln rollout {found.group} --resume' (or --promote), or "
        f"stop it with 'kiln rollout abort {found.group}'",
    )


def create(
    catalog: Catalog,
    group: str,
    target: str,
    target_ref: str,
    named: str,
    config: dict[str, str],
    settings: dict[str, Any],
    count: int,
    steps: Sequence[Step],
) -> Rollout:
    """A new running rollout holding ``steps``; BadInput (exit 2) naming the group's
    unfinished rollout when it has one."""
    from kiln.actor import actor
    from kiln.catalog.models import Rollout as RolloutModel

    with catalog.session() as session:
        found = _unfinished(session, group)
        if found is not None:
            raise refusal(_rollout(found))
        now = _now()
        row = RolloutModel(
            group_name=group,
            target=target,
            target_ref=target_ref,
            named=named,
            config=json.dumps(config, sort_keys=True),
            settings=json.dumps(settings, sort_keys=True),
            count=count,
            state=RUNNING,
            reason="",
            promoted=False,
            created=now,
            updated=now,
            actor=actor(),
        )
        _add_steps(row, steps, now)
        session.add(row)
        session.flush()
        return _rollout(row)


def unfinished(catalog: Catalog, group: str) -> Rollout | None:
    """The group's unfinished rollout, if it has one."""
    with catalog.reading() as session:
        found = _unfinished(session, group)
        return None if found is None else _rollout(found)


def latest(catalog: Catalog, group: str) -> Rollout | None:
    from kiln.catalog.models import Rollout as RolloutModel

    with catalog.reading() as session:
        found = (
            session.query(RolloutModel)
            .filter(RolloutModel.group_name == group)
            .order_by(RolloutModel.id.desc())
            .first()
        )
        return None if found is None else _rollout(found)


def history(catalog: Catalog, group: str) -> list[Rollout]:
    """Every rollout of the group, newest first."""
    from kiln.catalog.models import Rollout as RolloutModel

    with catalog.reading() as session:
        rows = (
            session.query(RolloutModel)
            .filter(RolloutModel.group_name == group)
            .order_by(RolloutModel.id.desc())
            .all()
        )
        return [_rollout(row) for row in rows]


def stable(catalog: Catalog, group: str) -> str | None:
    """The group's stable digest: the target of its newest rollout that baked."""
    from kiln.catalog.models import Rollout as RolloutModel

    with catalog.reading() as session:
        found = (
            session.query(RolloutModel.target)
            .filter(RolloutModel.group_name == group, RolloutModel.stable_at.is_not(None))
            .order_by(RolloutModel.stable_at.desc(), RolloutModel.id.desc())
            .first()
        )
        return None if found is None else str(found[0])


class Journal:
    """One rollout's rows as kiln.fleet.rollout reads and writes them; each write is its
    own transaction."""

    def __init__(self, catalog: Catalog, rollout_id: int) -> None:
        self.catalog = catalog
        self.id = rollout_id

    def _row(self, session: Session) -> RolloutModel:
        from kiln.catalog.models import Rollout as RolloutModel

        row = session.get(RolloutModel, self.id)
        if row is None:
            raise NotFound(f"rollout {self.id} is not in the catalog")
        return row

    def load(self) -> Rollout:
        with self.catalog.reading() as session:
            return _rollout(self._row(session))

    def state(self) -> str:
        from kiln.catalog.models import Rollout as RolloutModel

        with self.catalog.reading() as session:
            found = session.query(RolloutModel.state).filter(RolloutModel.id == self.id).first()
            return "" if found is None else str(found[0])

    def mark(self, position: int, state: str, detail: str = "") -> None:
        from kiln.catalog.models import RolloutStep

        now = _now()
        with self.catalog.session() as session:
            step = (
                session.query(RolloutStep)
                .filter(RolloutStep.rollout_id == self.id, RolloutStep.position == position)
                .one()
            )
            step.state = state
            step.detail = detail
            step.updated = now
            self._row(session).updated = now

    def set_state(
        self, state: str, reason: str | None = None, promoted: bool | None = None
    ) -> None:
        """The rollout's state (``reason`` None: the one it has stays)."""
        now = _now()
        with self.catalog.session() as session:
            row = self._row(session)
            row.state = state
            row.updated = now
            if reason is not None:
                row.reason = reason
            if promoted is not None:
                row.promoted = promoted
            if state not in UNFINISHED:
                row.finished = now

    def replan(self, state: str, reason: str, steps: Sequence[Step]) -> None:
        """In one transaction: every step not acted on yet (or a wait begun) is skipped,
        ``steps`` join the plan, and the rollout takes ``state`` (a rollback begins)."""
        now = _now()
        with self.catalog.session() as session:
            row = self._row(session)
            for step in row.steps:
                if step.state in (PLANNED, INTENT):
                    step.state = SKIPPED
                    step.updated = now
            _add_steps(row, steps, now)
            row.state = state
            row.reason = reason
            row.updated = now

    def lowest(self, healthy: int) -> None:
        with self.catalog.session() as session:
            row = self._row(session)
            if row.lowest_healthy is None or healthy < row.lowest_healthy:
                row.lowest_healthy = healthy

    def stable(self) -> None:
        with self.catalog.session() as session:
            self._row(session).stable_at = _now()
