"""The one way to run a command inside a root: systemd-nspawn.

A :class:`Sandbox` is a value: the root, binds and environment. Build steps use
:meth:`Sandbox.run`; machines boot a root with systemd as PID 1 from :class:`Boot`'s
command line. The host has no system bus, so containers are never registered with
machined (``--keep-unit --register=no``); each nspawn starts in a cgroup of its own
(kiln.cgroups), so no two share one.

Names on the host are per KILN_HOME. nspawn names what it makes outside the root after
its ``--machine=`` name (``/run/systemd/nspawn/propagate/NAME``, and the ``NAME.nspawn``
settings files it would read, which kiln turns off with ``--settings=false``); kiln's
cgroups are named after it too. So every nspawn gets a name that starts with its home's id
(:attr:`kiln.home.Home.id`): machine ``web`` of one home is ``<id>-web``, a build command
``build-<id>-<random>``; the container's host name stays ``web`` (or ``kiln-build``).

nspawn makes a mount point in the root for every bind whose target is missing (the
controller's virtualenv is bound at its host path, so its folders would name the build
host). :meth:`Sandbox.run` removes the ones it made, and only those, once the command is over.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln import cgroups, proc
from kiln.rootpath import Root, parts

BUILD_HOSTNAME = "kiln-build"
BUILD_ENV = {"DEBIAN_FRONTEND": "noninteractive", **proc.BASE_ENV}
# apt-get in a root, a bake's or a machine's: no pty, no recommends, no fsync per file
APT_OPTIONS = [
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "APT::Install-Recommends=false",
    "-o",
    "Dpkg::Options::=--force-unsafe-io",  # the layer is fsynced once, as a blob
]
# systemd-nspawn --machine=: a host name (letters, digits, '-' and '.', no label starting or
# ending with '-'), at most 64 characters
MACHINE_NAME_MAX = 64
# Files nspawn bind-mounts over; when absent from the root it creates empty ones to mount on.
MOUNT_POINT_FILES = ("etc/resolv.conf",)


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str
    readonly: bool = True

    def option(self) -> str:
        flag = "--bind-ro" if self.readonly else "--bind"
        return f"{flag}={self.source}:{self.target}"


def machine_name(home_id: str, name: str) -> str:
    """What systemd-nspawn calls machine ``name`` of the home ``home_id`` (``--machine=``):
    ``<id>-<name>``. A name too long for that keeps its first characters and gets a dot
    and 8 hex of its sha256: no machine name has a dot (kiln.machines.folder), so no two
    names of one home ever meet."""
    whole = f"{home_id}-{name}"
    if len(whole) <= MACHINE_NAME_MAX:
        return whole
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MACHINE_NAME_MAX - len(home_id) - len(digest) - 2
    return f"{home_id}-{name[:keep].rstrip('-')}.{digest}"


def machine_cgroup(home_id: str, name: str) -> str:
    """A machine's own cgroup (kiln.cgroups): ``machine-`` and its nspawn name."""
    return f"machine-{machine_name(home_id, name)}"


def build_name(home_id: str) -> str:
    """A fresh name for one build command's nspawn, which is its cgroup's name too."""
    return f"build-{home_id}-{secrets.token_hex(6)}"


def of_home(home_id: str, name: str) -> bool:
    """Whether ``name`` (a cgroup, or an nspawn machine name) is one kiln gives in home
    ``home_id``: a machine's, a machine's cgroup, or a build command's."""
    return name.startswith((f"{home_id}-", f"machine-{home_id}-", f"build-{home_id}-"))


@dataclass(frozen=True)
class Sandbox:
    root: Path
    home_id: str  # names on the host are this home's (kiln.home.Home.id)
    binds: tuple[Bind, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(BUILD_ENV))
    network: bool = True  # build steps use the host's network to reach the package mirror

    def with_binds(self, *binds: Bind) -> Sandbox:
        return Sandbox(self.root, self.home_id, self.binds + binds, self.env, self.network)

    def argv(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
    ) -> list[str]:
        out = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--settings=false",
            "--as-pid2",
            f"--directory={self.root}",
            f"--machine={machine or build_name(self.home_id)}",
            f"--hostname={BUILD_HOSTNAME}",
            "--timezone=off",
            "--link-journal=no",
            "--pipe",
            "--chdir=/",
            "--resolv-conf=bind-host" if self.network else "--private-network",
        ]
        out += [bind.option() for bind in self.binds]
        merged = {**self.env, **(env or {})}
        out += [f"--setenv={key}={value}" for key, value in sorted(merged.items())]
        return [*out, "--", *command]

    def run(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None, capture: bool = True
    ) -> str:
        """Run ``command`` in the root; its output lines are echoed (kiln.proc.echo_to)."""
        created = self.missing_mount_points()
        group = build_name(self.home_id)  # its own cgroup (kiln.cgroups) and nspawn name
        try:
            argv = cgroups.enter(group, self.argv(command, env=env, machine=group))
            result = proc.run(argv, capture=capture, echo=True)
        finally:
            cgroups.remove(group)
            self.remove_mount_points(created)
        return result.stdout.decode(errors="replace") if result.stdout else ""

    def missing_mount_points(self) -> list[str]:
        """The bind targets' path components not in the root yet, deepest first."""
        missing: list[str] = []
        with Root(self.root) as root:
            for bind in self.binds:
                names = parts(bind.target)
                for depth in range(1, len(names) + 1):
                    rel = "/".join(names[:depth])
                    if rel not in missing and not root.exists(rel):
                        missing.append(rel)
        return sorted(missing, key=lambda rel: (-rel.count("/"), rel))

    def remove_mount_points(self, created: Sequence[str]) -> None:
        """Remove what nspawn made to mount on: empty folders and empty files, never
        following a symlink; anything a command put there stays."""
        if not created:
            return
        with Root(self.root) as root:
            for rel in created:
                if not root.exists(rel):
                    continue
                st = root.lstat(rel)
                empty_dir = stat.S_ISDIR(st.st_mode) and not root.listdir(rel)
                if empty_dir or (stat.S_ISREG(st.st_mode) and st.st_size == 0):
                    root.remove(rel)


@dataclass(frozen=True)
class Boot:
    root: Path
    name: str
    home_id: str  # its nspawn name and cgroup are this home's (machine_name)
    binds: tuple[Bind, ...] = ()
    credentials: Mapping[str, int] = field(default_factory=dict)  # id -> readable fd
    private_network: bool = True  # False: the host's own network (kiln run --network host)
    host_resolv_conf: bool = False  # steps reach the package mirror as in a bake
    netns: Path | None = None  # a namespace kiln prepared (kiln.machines.netns), else loopback

    @property
    def cgroup(self) -> str:
        return machine_cgroup(self.home_id, self.name)

    def argv(self) -> list[str]:
        """Boot with a private network: the namespace kiln prepared with its address and
        route when given, else loopback only; or, without ``private_network``, in the
        host's own network. The console goes to nspawn's output; secrets arrive as
        credentials read from file descriptors kiln passes in, so they never touch a file
        system."""
        out = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--settings=false",
            "--boot",
            f"--directory={self.root}",
            f"--machine={machine_name(self.home_id, self.name)}",
            f"--hostname={self.name}",
            "--link-journal=no",
            "--timezone=off",
            "--console=read-only",
            "--kill-signal=SIGRTMIN+4",
            "--notify-ready=yes",  # READY=1 to NOTIFY_SOCKET once systemd finished booting
            f"--resolv-conf={'bind-host' if self.host_resolv_conf else 'off'}",
        ]
        if self.netns is not None:
            out.append(f"--network-namespace-path={self.netns}")
        if self.private_network or self.netns is not None:
            out.append("--private-network")
        out += [bind.option() for bind in self.binds]
        out += [
            f"--load-credential={cid}:/proc/self/fd/{fd}" for cid, fd in self.credentials.items()
        ]
        return out
