"""The plan of a rollout, and of its rollback: which member is replaced when, and how.

A plan is a list of steps (kiln.catalog.rollouts.Step) made once, before anything acts,
from the members as they are and the target (a digest and plain config). Members already
on the target are left out. The rest move in waves of at most ``max_surge +
max_unavailable`` members:

- ``max_surge`` of a wave are replaced beside themselves: the new member starts at the
  lowest free index, and the old one goes once the new one is healthy;
- the others are replaced in place: the old member goes first, the new one takes its index.

So at most ``max_unavailable`` members are ever down at once. The first ``canary`` members
move in waves of their own, then a ``promote`` step waits for promotion; a ``bake`` step
ends the plan. A rollback is planned the same way, from what the rollout changed, without
a canary or a bake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kiln.catalog.rollouts import FORWARD, ROLLBACK, STEP_DONE, Step
from kiln.fleet.members import Member, member_index, member_name
from kiln.lifecycle.fleetpolicy import UpdateSettings

START, REMOVE, WAIT, PROMOTE, BAKE = "start", "remove", "wait", "promote", "bake"


def on_target(member: Member, digest: str, config: Mapping[str, str]) -> bool:
    """Whether the member already runs ``digest`` with every value of ``config`` (values
    the image's contract filled in beside them do not count)."""
    return member.digest == digest and all(
        member.config.get(key) == value for key, value in config.items()
    )


@dataclass(frozen=True)
class Move:
    """One member to replace: the one there now, and what its replacement runs."""

    name: str
    index: int
    digest: str  # what it runs now
    config: dict[str, str]
    to_digest: str
    to_config: dict[str, str]


class _Planner:
    def __init__(self, group: str, phase: str, used: Iterable[int], first: int) -> None:
        self.group = group
        self.phase = phase
        self.used = set(used)  # indices held by members (and by machines no member)
        self.steps: list[Step] = []
        self.first = first

    def add(self, action: str, **values: object) -> None:
        position = self.first + len(self.steps)
        self.steps.append(Step(position, self.phase, action, **values))  # type: ignore[arg-type]

    def _free(self) -> int:
        index = 1
        while index in self.used:
            index += 1
        return index

    def start(self, move: Move, index: int) -> str:
        name = member_name(self.group, index)
        self.used.add(index)
        self.add(
            START,
            member=name,
            index=index,
            digest=move.to_digest,
            config=dict(move.to_config),
            replaces=move.name,
            from_digest=move.digest,
            from_config=dict(move.config),
        )
        return name

    def remove(self, name: str, index: int, digest: str) -> None:
        self.add(REMOVE, member=name, index=index, digest=digest)

    def wave(self, moves: Sequence[Move], surge: int) -> None:
        """Replace ``moves`` at once: the first ``surge`` beside themselves, the rest in
        place (each removed before its replacement starts at its index)."""
        beside, in_place = list(moves[:surge]), list(moves[surge:])
        for move in in_place:
            self.remove(move.name, move.index, move.digest)
        started = [self.start(move, self._free()) for move in beside]
        started += [self.start(move, move.index) for move in in_place]
        for name in started:
            index = member_index(self.group, name) or 0
            self.add(WAIT, member=name, index=index)
        for move in beside:
            self.remove(move.name, move.index, move.digest)
            self.used.discard(move.index)

    def waves(self, moves: Sequence[Move], settings: UpdateSettings) -> None:
        size = settings.max_surge + settings.max_unavailable
        for at in range(0, len(moves), size):
            self.wave(moves[at : at + size], settings.max_surge)


def forward(
    group: str,
    members: Sequence[Member],
    digest: str,
    config: Mapping[str, str],
    settings: UpdateSettings,
    taken: Iterable[int] = (),
) -> list[Step]:
    """The plan that moves ``members`` to ``digest`` with ``config``; empty when every
    member is on it already. ``taken``: indices that machines no member hold."""
    ordered = sorted(members, key=lambda m: m.index)
    moves = [
        Move(m.name, m.index, m.digest, dict(m.config), digest, dict(config))
        for m in ordered
        if not on_target(m, digest, config)
    ]
    if not moves:
        return []
    planner = _Planner(group, FORWARD, [m.index for m in ordered] + list(taken), 0)
    canaries, rest = moves[: settings.canary], moves[settings.canary :]
    planner.waves(canaries, settings)
    if canaries and rest:
        planner.add(PROMOTE)
    planner.waves(rest, settings)
    planner.add(BAKE, digest=digest)
    return planner.steps


def rollback(
    group: str,
    steps: Sequence[Step],
    members: Sequence[Member],
    settings: UpdateSettings,
    taken: Iterable[int] = (),
) -> list[Step]:
    """The plan that brings every member the forward steps replaced back to the digest and
    config it had, from ``members`` as they are now:

    - a new member whose old one is still there (started beside it) just goes;
    - an old member removed whose new one is not there gets its index back at once;
    - a new member that was not found healthy is replaced in place at once (it counts
      as down already);
    - the healthy new members are moved back in waves, as a rollout moves them.
    """
    here = {m.name: m for m in members}
    healthy = {
        s.member for s in steps if s.phase == FORWARD and s.action == WAIT and s.state == STEP_DONE
    }
    starts = [s for s in steps if s.phase == FORWARD and s.action == START]
    first = max((s.position for s in steps), default=-1) + 1
    planner = _Planner(group, ROLLBACK, [m.index for m in members] + list(taken), first)
    at_once: list[tuple[Move, bool]] = []  # (move, whether a new member must go first)
    later: list[Move] = []
    # old members are told by the forward removals done, never by name: a new member
    # may hold a removed one's name
    removed = {
        s.member
        for s in steps
        if s.phase == FORWARD and s.action == REMOVE and s.state == STEP_DONE
    }
    for step in starts:
        new = here.get(step.member) if step.state == STEP_DONE else None
        if step.replaces not in removed:
            if new is not None:  # started beside the old one, which is still there
                planner.remove(new.name, new.index, new.digest)
                planner.used.discard(new.index)
            continue
        if new is None:  # removed in place, its replacement not there: it comes back
            index = member_index(group, step.replaces) or step.index
            back = Move(step.replaces, index, "", {}, step.from_digest, dict(step.from_config))
            at_once.append((back, False))
            continue
        move = Move(
            new.name,
            new.index,
            new.digest,
            dict(new.config),
            step.from_digest,
            dict(step.from_config),
        )
        if new.name in healthy:
            later.append(move)
        else:
            at_once.append((move, True))
    for move, present in at_once:
        if present:
            planner.remove(move.name, move.index, move.digest)
    started = [planner.start(move, move.index) for move, _present in at_once]
    for name in started:
        planner.add(WAIT, member=name, index=member_index(group, name) or 0)
    planner.waves(sorted(later, key=lambda m: m.index), settings)
    return planner.steps
