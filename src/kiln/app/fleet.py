"""Groups' members as ordinary machines of this host: the Driver kiln.fleet acts through.

A member ``<group>-<n>`` is launched the way ``kiln run`` launches any machine
(kiln.app.machines.run), from ``family@digest``, with the group's network and its port
for member n, each of the image's state paths on a folder under
``$KILN_HOME/state/<group>-<n>`` (as ``--volume PATH=DIR``: kept when the member is
removed, found again by the member that takes its place), and the group's plain config
and secrets. Secrets are read from their sources (a file beside the policy file, or kiln's
own environment) once per group and command, and reach the machine as any machine's
secrets do, over a pipe; they are never written anywhere.

A machine is a member when its state says so (``group``), not by its name alone: a machine
someone ran as ``web-1`` by hand is never started, replaced or removed by ``kiln up``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import locks, refs
from kiln.app import machines, resolve
from kiln.app.workspace import Workspace
from kiln.catalog.machinelookup import live_launches
from kiln.errors import BadInput, KilnError
from kiln.fleet import groups
from kiln.fleet.members import BOOTING, NOT_RUNNING, Member, member_index, member_name
from kiln.fleet.secrets import member_values, read_secrets
from kiln.home import Home
from kiln.lifecycle.fleetpolicy import GroupSpec
from kiln.machines import config, enter, health, launch, notify, process
from kiln.machines.contract import Contract, from_config
from kiln.machines.folder import Folder, State, load, machines_dir, save

if TYPE_CHECKING:
    from kiln.lifecycle.policy import Policy


def state_root(home: Home) -> Path:
    """Where members keep their state paths: ``state/<group>-<n>/<escaped path>``."""
    return home.root / "state"


def lock_path(home: Home, group: str) -> Path:
    return home.locks / f"group.{group}.lock"


@contextmanager
def group_lock(home: Home, group: str) -> Iterator[None]:
    """Hold group ``group``'s lock for the block: one command at a time changes a group's
    members (kiln up, kiln rollout). Another holder is an error at once, never a wait."""
    home.ensure()
    path = lock_path(home, group)
    held = locks.hold(path, wait=False)
    if held is None:
        raise KilnError(
            f"group {group} is being changed by another kiln command (its lock {path} is held)",
            hint="wait for that kiln up or kiln rollout to end, then run this again",
        )
    with held:
        yield


def _state_or_none(folder: Folder) -> State | None:
    try:
        return load(folder)
    except KilnError:
        return None


class HostDriver:
    """kiln.fleet.members.Driver over this host's machines, on one Workspace and policy."""

    def __init__(self, workspace: Workspace, policy: Policy) -> None:
        self.workspace = workspace
        self.policy = policy
        self._secrets: dict[str, dict[str, str]] = {}
        self._contracts: dict[str, Contract] = {}
        # the nspawn reports of members this driver started, until their boot has ended
        self._booting: dict[str, notify.Channel] = {}

    # --- reading ---

    def contract(self, digest: str) -> Contract:
        """The runtime contract of the image ``digest`` (its OCI config's labels)."""
        if digest not in self._contracts:
            layout = self.workspace.layout
            manifest = layout.read_json(digest)
            self._contracts[digest] = from_config(layout.read_json(manifest["config"]["digest"]))
        return self._contracts[digest]

    def secrets(self, group: str, spec: GroupSpec) -> dict[str, str]:
        """The group's secrets, read from their sources once per Driver."""
        if group not in self._secrets:
            self._secrets[group] = read_secrets(self.policy, group, spec)
        return self._secrets[group]

    def _candidates(self, group: str) -> Iterator[tuple[int, Folder, State | None]]:
        folder = machines_dir(self.workspace.home)
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        for name in names:
            index = member_index(group, name)
            machine = Folder(folder / name)
            if index is None or not machine.exists():
                continue  # not a member name, or volumes kept by kiln rm
            yield index, machine, _state_or_none(machine)

    def taken(self, group: str) -> frozenset[int]:
        """Indices whose names machines that are no members of ``group`` hold."""
        return frozenset(
            index
            for index, _folder, state in self._candidates(group)
            if state is None or state.group != group
        )

    def members(self, group: str) -> list[Member]:
        launches = live_launches(self.workspace.lookup)
        out = []
        for index, folder, state in self._candidates(group):
            if state is None or state.group != group:
                continue
            launch_row = launches.get(folder.name)
            out.append(
                Member(
                    name=folder.name,
                    group=group,
                    index=index,
                    image=state.image,
                    digest=state.digest,
                    state="running" if process.running(state) else "stopped",
                    address=state.address,
                    ports=tuple(state.ports),
                    config=dict(launch_row.config) if launch_row else {},
                    created=launch_row.created if launch_row else "",
                )
            )
        return sorted(out, key=lambda member: member.index)

    # --- acting ---

    def check(self, group: str, spec: GroupSpec, digest: str, plain: Mapping[str, str]) -> None:
        """What a start of a member from ``digest`` needs is there: its secrets can be read
        and the values fit the image's contract (BadInput otherwise). Called before a
        command acts, so a bad source or a missing key starts nothing."""
        self._values(group, spec, digest, plain)

    def _values(
        self, group: str, spec: GroupSpec, digest: str, plain: Mapping[str, str]
    ) -> config.Values:
        given = {**plain, **self.secrets(group, spec)}
        return member_values(
            group, self._ref(spec, digest), self.contract(digest), given, self.policy
        )

    @staticmethod
    def _ref(spec: GroupSpec, digest: str) -> str:
        return f"{refs.parse(spec.image).name}@{digest}"

    def start(
        self, group: str, spec: GroupSpec, index: int, digest: str, config: dict[str, str]
    ) -> Member:
        name = member_name(group, index)
        contract = self.contract(digest)
        volumes = (
            groups.member_volumes(state_root(self.workspace.home), name, contract.state)
            if spec.volumes
            else ()
        )
        request = launch.Request(
            name=name,
            volumes=volumes,
            values=self._values(group, spec, digest, config),
            network=spec.network,
            ports=groups.member_ports(spec, index),
            group=group,
        )
        folder = Folder.of(self.workspace.home, name)
        if folder.exists():
            raise BadInput(
                f"a machine named {name} exists and is no member of group {group}",
                hint=f"kiln rm {name}, or rename the group",
            )
        try:
            launched = machines.run(self.workspace, request, self._ref(spec, digest))
            if launched.channel is not None:
                self._booting[name] = launched.channel
            state = launched.state
            if state.group != group:  # the group is what makes the machine a member
                state = dataclasses.replace(state, group=group)
                save(launched.folder, state)
        except KilnError:
            if folder.exists():  # it booted, then something after the boot failed
                machines.rm(self.workspace, name, with_volumes=not spec.volumes, force=True)
            raise
        return Member(
            name=name,
            group=group,
            index=index,
            image=state.image,
            digest=state.digest,
            state="running",
            address=state.address,
            ports=tuple(state.ports),
            config=dict(launched.values.plain),
        )

    def healthy(self, member: Member) -> tuple[bool, str]:
        state = _state_or_none(Folder.of(self.workspace.home, member.name))
        if state is None or not process.running(state):
            return False, NOT_RUNNING
        if self._still_booting(member.name):
            return False, BOOTING
        check = self.contract(state.digest).health
        if check is None:  # booted is all it can say
            answer = enter.run(state.leader.pid, ["systemctl", "is-system-running"])
            status = answer.stdout.decode(errors="replace").strip() or "starting"
            return status == "running", f"systemd {status} (the image has no health check)"
        health.check_tools(check)
        return health.check_once(state.leader.pid, check, check.timeout)

    def _still_booting(self, name: str) -> bool:
        """A member this driver started whose systemd has not said READY=1: asking it
        anything now would only take CPU from its boot (kiln.machines.notify)."""
        channel = self._booting.get(name)
        if channel is None:
            return False
        channel.receive(0)
        if not channel.ready:
            return True
        channel.close()
        del self._booting[name]
        return False

    def remove(self, member: Member) -> None:
        """kiln rm of the member: its folders under state/ stay. A group without volumes
        keeps nothing: the state paths in the member's own folder go with it."""
        channel = self._booting.pop(member.name, None)
        if channel is not None:
            channel.close()
        spec = self.policy.groups.get(member.group)
        machines.rm(
            self.workspace,
            member.name,
            with_volumes=spec is not None and not spec.volumes,
            force=False,
        )


@dataclass
class Up:
    """What kiln up did to one group."""

    group: str
    image: str  # the group's image ref
    ref: str  # name:version it names now
    outcome: groups.Outcome

    def to_json(self) -> dict[str, Any]:
        decided = self.outcome.plan
        return {
            "group": self.group,
            "image": self.image,
            "ref": self.ref,
            "digest": decided.digest,
            "count": decided.count,
            "changed": not decided.empty,
            "removed": [r.to_json() for r in self.outcome.removed],
            "started": [s.to_json() for s in self.outcome.started],
            "not_started": [n.to_json() for n in self.outcome.not_started],
            "unhealthy": [s.member.name for s in self.outcome.unhealthy],
            "kept": [m.name for m in decided.kept],
            "elsewhere": [m.to_json() for m in decided.elsewhere],
        }


def _chosen(policy: Policy, group: str | None) -> list[str]:
    if group is not None:
        policy.group(group)  # BadInput naming the nearest one
        return [group]
    if not policy.groups:
        where = f"the policy {policy.path}" if policy.path else "no policy file (kiln.toml)"
        raise BadInput(
            f"{where} declares no groups",
            hint="declare one as [groups.NAME] with image and count (docs/fleet.md), "
            "or give --policy PATH",
        )
    return list(policy.groups)


def up(
    workspace: Workspace,
    group: str | None = None,
    policy_file: Path | None = None,
    log: Callable[[str], None] = lambda _message: None,
) -> tuple[Policy, list[Up]]:
    """kiln up: each chosen group (all the policy declares, when none is named) brought
    to its count, under the group's lock. Every image ref is resolved once, and every
    start is checked (secrets readable, values fit the image) before anything is done."""
    from kiln.lifecycle.policy import find

    policy = find(workspace.home, policy_file)
    names = _chosen(policy, group)
    log(f"policy: {policy.path}")
    driver = HostDriver(workspace, policy)
    results: list[Up] = []
    with ExitStack() as held:
        for name in names:
            held.enter_context(group_lock(workspace.home, name))
        rows = {name: resolve.image(workspace, policy.groups[name].image) for name in names}
        plans = {}
        for name in names:
            spec = policy.groups[name]
            found = driver.members(name)
            decided = groups.plan(name, spec, found, rows[name].digest, driver.taken(name))
            if decided.starts:
                driver.check(name, spec, decided.digest, spec.config)
            plans[name] = decided
        for name in names:

            def said(message: str, name: str = name) -> None:
                log(f"{name}: {message}")

            outcome = groups.apply(driver, policy.groups[name], plans[name], said)
            results.append(Up(name, policy.groups[name].image, rows[name].ref, outcome))
    return policy, results


@dataclass
class MemberView:
    """A member as kiln group show lists it: one health check now, and its drift."""

    member: Member
    healthy: bool
    health: str
    drift: int | None = None  # paths changed against its image (the quick count)
    drift_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = describe_member(self.member)
        data.update(healthy=self.healthy, health=self.health, drift=self.drift)
        if self.drift_error is not None:
            data["drift_error"] = self.drift_error
        return data


@dataclass
class GroupView:
    group: str
    spec: GroupSpec
    ref: str | None  # name:version the image ref names now (None: it names none)
    digest: str | None
    error: str | None
    members: list[MemberView]

    def to_json(self, with_members: bool = True) -> dict[str, Any]:
        running = [v for v in self.members if v.member.running]
        data: dict[str, Any] = {
            "group": self.group,
            "image": self.spec.image,
            "ref": self.ref,
            "digest": self.digest,
            "error": self.error,
            "network": self.spec.network,
            "ports": list(self.spec.ports),
            "volumes": self.spec.volumes,
            "count": {
                "wanted": self.spec.count,
                "members": len(self.members),
                "running": len(running),
                "healthy": sum(1 for v in self.members if v.healthy),
            },
            "elsewhere": sorted(
                v.member.name
                for v in self.members
                if self.digest and v.member.digest != self.digest
            ),
        }
        if with_members:
            data["members"] = [v.to_json() for v in self.members]
        return data


def _view(
    workspace: Workspace, driver: HostDriver, name: str, spec: GroupSpec, with_drift: bool
) -> GroupView:
    from kiln.app import drift

    ref = digest = error = None
    try:
        row = resolve.image(workspace, spec.image, usable=False)
        ref, digest = row.ref, row.digest
    except KilnError as exc:
        error = exc.message
    views = []
    for member in driver.members(name):
        ok, detail = driver.healthy(member)
        view = MemberView(member, ok, detail)
        if with_drift:
            try:
                view.drift = drift.drift(workspace, member.name).total
            except KilnError as exc:
                view.drift_error = exc.message
        views.append(view)
    return GroupView(name, spec, ref, digest, error, views)


def group_ls(
    workspace: Workspace, policy_file: Path | None = None
) -> tuple[Policy, list[GroupView]]:
    """Every group of the policy, with its members counted (one health check each now)."""
    from kiln.lifecycle.policy import find

    policy = find(workspace.home, policy_file)
    driver = HostDriver(workspace, policy)
    views = [_view(workspace, driver, n, s, False) for n, s in policy.groups.items()]
    return policy, views


def group_show(
    workspace: Workspace, group: str, policy_file: Path | None = None
) -> tuple[Policy, GroupView]:
    """One group's members: index, version, digest, state, health now, address, ports, drift."""
    from kiln.lifecycle.policy import find

    policy = find(workspace.home, policy_file)
    spec = policy.group(group)
    return policy, _view(workspace, HostDriver(workspace, policy), group, spec, True)


def describe_member(member: Member) -> dict[str, Any]:
    """A member's row in kiln up's and kiln group's JSON."""
    data = member.to_json()
    family, _colon, version = member.image.partition(":")
    data["version"] = int(version) if version.isdigit() else None
    data["family"] = family
    return data
