"""The one way to run a command inside a root: systemd-nspawn.

A :class:`Sandbox` is a value: the root, binds and environment. Build steps use
:meth:`Sandbox.run`; machines (later) boot the same root with systemd as PID 1.
The host has no system bus, so containers are never registered with machined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln import proc

BUILD_HOSTNAME = "kiln-build"
BUILD_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
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
        result = proc.run(self.argv(command, env=env), capture=capture)
        return result.stdout.decode(errors="replace") if result.stdout else ""
