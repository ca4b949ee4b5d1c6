"""The one way to run a command inside a root: systemd-nspawn.

A :class:`Sandbox` is a value: the root, binds and environment. Build steps use
:meth:`Sandbox.run`; machines boot a root with systemd as PID 1 from :class:`Boot`'s
command line. The host has no system bus, so containers are never registered with
machined (``--keep-unit --register=no``); each nspawn starts in a cgroup of its own
(kiln.cgroups), so no two share one.

nspawn makes a mount point in the root for every bind whose target is missing (the
controller's virtualenv is bound at its host path, so its folders would name the build
host). :meth:`Sandbox.run` removes the ones it made, and only those, once the command is over.
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln import cgroups, proc
from kiln.rootpath import Root, parts

BUILD_HOSTNAME = "kiln-build"
BUILD_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
# apt-get in a root, a bake's or a machine's: no pty, no recommends, no fsync per file
APT_OPTIONS = [
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "APT::Install-Recommends=false",
    "-o",
    "Dpkg::Options::=--force-unsafe-io",  # the layer is fsynced once, as a blob
]
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


@dataclass(frozen=True)
class Sandbox:
    root: Path
    binds: tuple[Bind, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(BUILD_ENV))
    network: bool = True  # build steps use the host's network to reach the package mirror

    def with_binds(self, *binds: Bind) -> Sandbox:
        return Sandbox(self.root, self.binds + binds, self.env, self.network)

    def argv(self, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> list[str]:
        out = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--as-pid2",
            f"--directory={self.root}",
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
        group = f"build-{secrets.token_hex(6)}"  # its own cgroup (kiln.cgroups)
        try:
            argv = cgroups.enter(group, self.argv(command, env=env))
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


def machine_cgroup(name: str) -> str:
    """A machine's own cgroup (kiln.cgroups), named after it."""
    return f"machine-{name}"


@dataclass(frozen=True)
class Boot:
    root: Path
    name: str
    binds: tuple[Bind, ...] = ()
    credentials: Mapping[str, int] = field(default_factory=dict)  # id -> readable fd
    private_network: bool = True
    host_resolv_conf: bool = False  # steps reach the package mirror as in a bake

    @property
    def cgroup(self) -> str:
        return machine_cgroup(self.name)

    def argv(self) -> list[str]:
        """Boot with a private network (loopback only) by default; the console goes to
        nspawn's output; secrets arrive as credentials read from file descriptors kiln
        passes in, so they never touch a file system."""
        out = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--boot",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--hostname={self.name}",
            "--link-journal=no",
            "--timezone=off",
            "--console=read-only",
            "--kill-signal=SIGRTMIN+4",
            f"--resolv-conf={'bind-host' if self.host_resolv_conf else 'off'}",
        ]
        if self.private_network:
            out.append("--private-network")
        out += [bind.option() for bind in self.binds]
        out += [
            f"--load-credential={cid}:/proc/self/fd/{fd}" for cid, fd in self.credentials.items()
        ]
        return out
