"""Machines: run, start, ps, stop, rm, exec, logs and test, each on the process's Workspace.

The image a machine boots is the catalog's answer for its ref (kiln.app.resolve); on the
embedded catalog that answer is plain SQL, so ``kiln run`` stays quick to healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.app import resolve
from kiln.app.signing import enforce_trust
from kiln.app.workspace import Workspace
from kiln.machines import launch
from kiln.machines.launch import Request, StartRequest

if TYPE_CHECKING:  # they load SQLAlchemy and pydantic: not on kiln run's clock
    from kiln.machines import manage, testing

__all__ = [
    "Request",
    "StartRequest",
    "exec_argv",
    "logs",
    "ps",
    "rm",
    "run",
    "start",
    "stop",
    "test",
]


def run(workspace: Workspace, request: Request, ref: str) -> launch.Launched:
    started = time.monotonic()
    row = resolve.image(workspace, ref)
    enforce_trust(workspace, row)  # a policy requiring signatures refuses it before it boots
    image = resolve.load(workspace, row)
    return launch.run(request, image, row.id, workspace.home, started, lambda: workspace.catalog)


def start(workspace: Workspace, request: StartRequest) -> launch.Launched:
    """Boot a stopped machine again, from the very image (by digest) it was launched from."""
    state = launch.stopped(workspace.home, request.name)
    name = state.image.partition(":")[0]
    row = resolve.image(workspace, f"{name}@{state.digest}")
    enforce_trust(workspace, row)
    image = resolve.load(workspace, row)
    return launch.start(request, image, workspace.home, lambda: workspace.catalog)


def ps(workspace: Workspace, include_removed: bool = False) -> list[dict[str, Any]]:
    from kiln.machines import manage

    return manage.ps(workspace.catalog, include_removed)


def stop(workspace: Workspace, name: str, timeout: float) -> dict[str, Any]:
    from kiln.machines import manage

    return manage.stop(workspace.home, workspace.catalog, name, timeout)


def rm(workspace: Workspace, name: str, with_volumes: bool, force: bool) -> manage.Removed:
    from kiln.machines import manage

    return manage.rm(workspace.home, workspace.catalog, name, with_volumes, force)


def exec_argv(workspace: Workspace, name: str, command: Sequence[str]) -> list[str]:
    from kiln.machines import manage

    return manage.exec_argv(workspace.home, name, command)


def logs(
    workspace: Workspace,
    name: str,
    unit: str | None = None,
    lines: int | None = None,
    follow: bool = False,
    console: bool = False,
) -> manage.Logs:
    from kiln.machines import manage

    return manage.logs(workspace.home, name, unit=unit, lines=lines, follow=follow, console=console)


def test(
    workspace: Workspace,
    ref: str,
    sets: tuple[str, ...] = (),
    config_file: Path | None = None,
    check_convergence: bool = False,
    log: Callable[[str], None] = lambda _message: None,
) -> testing.Report:
    """Resolve ``ref`` once, then boot, test and (optionally) re-apply in a machine."""
    from kiln.machines import testing

    row, image = resolve.image_and_bytes(workspace, ref)
    return testing.run(
        workspace.home, workspace.catalog, row, image, sets, config_file, check_convergence, log
    )
