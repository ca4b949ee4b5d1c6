"""Running commands inside a machine: nsenter into the namespaces of its PID 1.

Commands see the machine as its own services do (``-a``: every namespace), with a small
explicit environment; the host's is never passed in. Steps applied to a running machine
(kiln test --converge) keep the host's network, as they had in the bake, so they reach
the package mirror. A health check over HTTP runs the host's curl in the machine's network
namespace alone.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from kiln import proc
from kiln.errors import BadInput

ALL = ("-a",)
ALL_BUT_NETWORK = ("-m", "-u", "-i", "-p", "-C")


def _env(extra: Mapping[str, str] | None) -> list[str]:
    merged = {**proc.BASE_ENV, **(extra or {})}
    return ["env", "-i", *(f"{k}={v}" for k, v in sorted(merged.items()))]


def argv(
    leader: int,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    host_network: bool = False,
) -> list[str]:
    namespaces = ALL_BUT_NETWORK if host_network else ALL
    return ["nsenter", "-t", str(leader), *namespaces, "--", *_env(env), *command]


def network_argv(leader: int, command: Sequence[str]) -> list[str]:
    """A host program in the machine's network namespace only."""
    return ["nsenter", "-t", str(leader), "-n", "--", *command]


def run(
    leader: int,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    host_network: bool = False,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside; output captured (stdout and stderr merged)."""
    full = argv(leader, command, env=env, host_network=host_network)
    if timeout is not None:
        full = ["timeout", "--kill-after=2", f"{max(timeout, 0.1):.2f}", *full]
    return proc.run(full, check=check)


def shell(
    leader: int,
    script: str,
    *,
    env: Mapping[str, str] | None = None,
    host_network: bool = False,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return run(
        leader, ["/bin/sh", "-c", script], env=env, host_network=host_network, timeout=timeout
    )


def exec_argv(leader: int, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The argv that runs the command inside the machine, nsenter's full path first, for
    a process to become (kiln exec, kiln logs): its stdio, exit code, signals."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise BadInput("nsenter is not installed", hint="apt-get install util-linux")
    return [nsenter, *argv(leader, command, env=env)[1:]]


TIMED_OUT = 124  # timeout(1)'s exit code
