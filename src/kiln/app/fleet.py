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
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import locks, refs
from kiln.app import machines
from kiln.app.workspace import Workspace
from kiln.errors import BadInput, KilnError, NotFound, RecipeError
from kiln.fleet import groups
from kiln.fleet.members import NOT_RUNNING, Member, member_index, member_name
from kiln.home import Home
from kiln.lifecycle.fleetpolicy import GroupSpec
from kiln.machines import config, health, launch, process
from kiln.machines.contract import Contract, from_config
from kiln.machines.folder import Folder, State, load, machines_dir, save
from kiln.recipe.limits import read_regular

if TYPE_CHECKING:
    from kiln.lifecycle.policy import Policy

# put before a value --set would read as '-' (standard input) or '@FILE' while the values
# are checked, and taken off again: the value itself reaches the machine
LITERAL = "_"


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


def _strip_newline(data: bytes) -> bytes:
    """One trailing newline (LF or CRLF) goes, as with ``kiln run --set KEY=@FILE``."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def read_secrets(
    policy: Policy, group: str, spec: GroupSpec, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The group's secrets from their sources: ``file`` relative to the policy file's folder
    (a regular file of bounded size, one trailing newline dropped), ``env`` from kiln's own
    environment. Every source that cannot be read is named by its key path at once
    (BadInput, exit 2), before anything starts."""
    env = os.environ if environ is None else environ
    folder = policy.path.parent if policy.path is not None else Path.cwd()
    where_file = f" ({policy.path})" if policy.path is not None else ""
    problems: list[str] = []
    out: dict[str, str] = {}
    for key, source in sorted(spec.secrets.items()):
        where = f"groups.{group}.secrets.{key}"
        if source.file is not None:
            path = folder / source.file
            try:
                data = read_regular(path, config.MAX_VALUE_BYTES, "secret file")
            except NotFound:
                problems.append(f"{where}: file = '{source.file}': no such file ({path})")
                continue
            except RecipeError as exc:
                problems += [f"{where}: file = '{source.file}': {p.message}" for p in exc.problems]
                continue
            except OSError as exc:
                problems.append(f"{where}: file = '{source.file}': {exc.strerror} ({path})")
                continue
            try:
                out[key] = _strip_newline(data).decode()
            except UnicodeDecodeError:
                problems.append(f"{where}: file = '{source.file}': the value is not UTF-8 text")
        else:
            assert source.env is not None
            value = env.get(source.env)
            if value is None:
                problems.append(
                    f"{where}: env = '{source.env}': kiln's environment has no {source.env}"
                )
            else:
                out[key] = value
    if problems:
        count = len(problems)
        raise BadInput(
            f"group {group}: {count} secret source{'s' if count != 1 else ''} cannot be read"
            f"{where_file}\n" + "\n".join(f"  {p}" for p in problems),
            hint="put the file there or set the variable in kiln's environment; "
            "nothing was started",
        )
    return out


def member_values(
    group: str, ref: str, contract: Contract, given: Mapping[str, str], policy: Policy
) -> config.Values:
    """The values a member starts with, checked against the image's contract exactly as
    ``kiln run --set`` values are (unknown keys, required ones missing, defaults). A value
    is the value itself here, never read as '-' (standard input) or '@FILE'."""
    shielded = {
        key: LITERAL + value
        if value == config.STDIN or value.startswith(config.FROM_FILE)
        else value
        for key, value in given.items()
    }
    sets = [f"{key}={value}" for key, value in sorted(shielded.items())]
    try:
        checked = config.resolve(ref, contract, sets)
    except config.ConfigError as exc:
        where = f"the policy {policy.path}" if policy.path else "the policy file"
        raise BadInput(
            f"group {group}: " + exc.message,
            hint=f"set them in [groups.{group}] config or secrets of {where}; nothing was started",
        ) from None

    def real(values: Mapping[str, str]) -> dict[str, str]:
        return {key: given.get(key, value) for key, value in values.items()}

    return config.Values(real(checked.plain), real(checked.secrets))


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
        rows = {row["name"]: row for row in machines.ps(self.workspace)}
        out = []
        for index, folder, state in self._candidates(group):
            if state is None or state.group != group:
                continue
            row = rows.get(folder.name, {})
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
                    config=dict(row.get("config") or {}),
                    created=str(row.get("created") or ""),
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
        launched = machines.run(self.workspace, request, self._ref(spec, digest))
        state = launched.state
        if state.group != group:  # the group is what makes the machine a member
            state = dataclasses.replace(state, group=group)
            save(launched.folder, state)
        try:
            health.wait_running(state, launched.folder.console, launch.BOOT_TIMEOUT)
        except KilnError:
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
        check = self.contract(state.digest).health
        if check is None:
            return True, "running (the image has no health check)"
        health.check_tools(check)
        return health.check_once(state.leader.pid, check, check.timeout)

    def remove(self, member: Member) -> None:
        """kiln rm of the member: its folders under state/ stay. A group without volumes
        keeps nothing: the state paths in the member's own folder go with it."""
        spec = self.policy.groups.get(member.group)
        machines.rm(
            self.workspace,
            member.name,
            with_volumes=spec is not None and not spec.volumes,
            force=False,
        )


def describe_member(member: Member) -> dict[str, Any]:
    """A member's row in kiln up's and kiln group's JSON."""
    data = member.to_json()
    family, _colon, version = member.image.partition(":")
    data["version"] = int(version) if version.isdigit() else None
    data["family"] = family
    return data
