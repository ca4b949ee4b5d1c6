"""``kiln rollout``: a group moved to a new image (or new config) member by member.

The target is resolved once, here, through the one resolver: a digest, which the rollout
keeps while a channel moves on. The plan (kiln.fleet.rollout_plan) is made from the
members as they are and written to the catalog before the first step acts; the run
(kiln.fleet.rollout) acts through app/fleet's Driver under the group's lock, the same
lock ``kiln up`` takes, so nothing else changes the group meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import refs
from kiln.app import resolve
from kiln.app.fleet import HostDriver, group_lock
from kiln.app.workspace import Workspace
from kiln.catalog import rollouts
from kiln.catalog.rollouts import Rollout
from kiln.errors import BadInput, KilnError
from kiln.fleet import rollout_plan
from kiln.fleet.rollout import Outcome, Run

if TYPE_CHECKING:
    from kiln.lifecycle.fleetpolicy import GroupSpec
    from kiln.lifecycle.policy import Policy


def _policy(workspace: Workspace, group: str, policy_file: Path | None) -> tuple[Policy, GroupSpec]:
    from kiln.lifecycle.policy import find

    policy = find(workspace.home, policy_file)
    return policy, policy.group(group)


def parse_sets(sets: Sequence[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` values; BadInput naming the first without '='."""
    out: dict[str, str] = {}
    for item in sets:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise BadInput(
                f"--set {item!r} is not KEY=VALUE",
                hint="give each value as --set KEY=VALUE (plain values; secrets come from "
                "the group's secrets in the policy file)",
            )
        out[key] = value
    return out


@dataclass
class Report:
    """What one ``kiln rollout GROUP`` did."""

    group: str
    rollout: Rollout | None  # None: nothing to do
    outcome: Outcome | None
    target: str
    target_ref: str
    members: int

    @property
    def ok(self) -> bool:
        return self.outcome is None or self.outcome.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "target": self.target,
            "target_ref": self.target_ref,
            "changed": self.rollout is not None,
            "members": self.members,
            "ok": self.ok,
            "acted": self.outcome.acted if self.outcome else 0,
            "rollout": self.rollout.to_json() if self.rollout else None,
        }


def _unfinished(workspace: Workspace, group: str) -> Rollout:
    found = rollouts.unfinished(workspace.catalog, group)
    if found is None:
        raise BadInput(
            f"group {group} has no unfinished rollout to continue",
            hint=f"'kiln rollout history {group}' lists its rollouts; 'kiln rollout {group}' "
            "starts a new one",
        )
    return found


def rollout(
    workspace: Workspace,
    group: str,
    to: str | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    promote: bool = False,
    policy_file: Path | None = None,
    log: Callable[[str], None] = lambda _message: None,
) -> Report:
    """Start a rollout of ``group`` to ``to`` (default: what its image ref names now) with
    the group's config and ``sets``; or, with ``resume``/``promote``, continue its
    unfinished one. BadInput (exit 2) when a new one is asked for and one is unfinished."""
    policy, spec = _policy(workspace, group, policy_file)
    if (resume or promote) and (to is not None or sets):
        raise BadInput(
            "--resume and --promote continue a rollout as it was planned: --to and --set "
            "belong to a new one",
            hint=f"run 'kiln rollout {group} --resume' alone",
        )
    driver = HostDriver(workspace, policy)
    with group_lock(workspace.home, group):
        if resume or promote:
            cut = _unfinished(workspace, group)
            log(f"continuing {rollouts.describe(cut)}")
            return _run(workspace, driver, spec, cut, promote, log)
        found = rollouts.unfinished(workspace.catalog, group)
        if found is not None:
            raise rollouts.refusal(found)
        named = to or spec.image
        row = resolve.image(workspace, named)
        family = refs.parse(spec.image).name
        if row.name != family:
            raise BadInput(
                f"--to {named} is an image of {row.name}; group {group} runs {family}",
                hint=f"name a version or channel of {family}, or change the group's image",
            )
        config = {**spec.config, **parse_sets(sets)}
        members = driver.members(group)
        stopped = [m.name for m in members if not m.running]
        if stopped or len(members) != spec.count:
            what = f"{', '.join(stopped)} not running" if stopped else f"{len(members)} members"
            raise KilnError(
                f"group {group} is not at its count of {spec.count} running members "
                f"({what}): a rollout keeps healthy capacity only from a whole group",
                hint=f"'kiln up {group}' brings it to its count first",
            )
        steps = rollout_plan.forward(
            group, members, row.digest, config, spec.update, driver.taken(group)
        )
        if not steps:
            log(f"nothing to do: every member of {group} runs {row.ref} with this config")
            return Report(group, None, None, row.digest, row.ref, len(members))
        driver.check(group, spec, row.digest, config)
        made = rollouts.create(
            workspace.catalog,
            group,
            row.digest,
            row.ref,
            named,
            config,
            spec.update.model_dump(),
            spec.count,
            steps,
        )
        log(f"rollout {made.id}: {group} to {row.ref} ({len(steps)} steps)")
        return _run(workspace, driver, spec, made, promote, log)


def _run(
    workspace: Workspace,
    driver: HostDriver,
    spec: GroupSpec,
    found: Rollout,
    promote: bool,
    log: Callable[[str], None],
) -> Report:
    journal = rollouts.Journal(workspace.catalog, found.id)
    run = Run(
        driver, journal, spec, promote=promote, taken=sorted(driver.taken(found.group)), log=log
    )
    outcome = run.run()
    members = len(driver.members(found.group))
    return Report(found.group, outcome.rollout, outcome, found.target, found.target_ref, members)


def status(workspace: Workspace, group: str, policy_file: Path | None = None) -> dict[str, Any]:
    """The group's newest rollout with its steps, and its stable digest."""
    _policy(workspace, group, policy_file)
    latest = rollouts.latest(workspace.catalog, group)
    return {
        "group": group,
        "stable": rollouts.stable(workspace.catalog, group),
        "rollout": latest.to_json() if latest else None,
    }


def history(workspace: Workspace, group: str, policy_file: Path | None = None) -> list[Rollout]:
    """Every rollout of the group, newest first."""
    _policy(workspace, group, policy_file)
    return rollouts.history(workspace.catalog, group)


def abort(workspace: Workspace, group: str) -> Rollout:
    """End the group's unfinished rollout where it is: the members stay as they are; a run
    acting on it stops after its current step."""
    from kiln.actor import actor

    found = _unfinished(workspace, group)
    journal = rollouts.Journal(workspace.catalog, found.id)
    journal.set_state(rollouts.ABORTED, reason=f"aborted by {actor()}")
    return journal.load()
