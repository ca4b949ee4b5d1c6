"""Machines: run, start, ps, stop, rm, exec, logs and test, each on the process's Workspace.

The image a machine boots is the catalog's answer for its ref (kiln.app.resolve); on the
embedded catalog that answer is plain SQL, so ``kiln run`` stays quick to healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.app import network, resolve
from kiln.app.signing import enforce_trust
from kiln.app.workspace import Workspace
from kiln.errors import KilnError, NotFound
from kiln.home import Home
from kiln.machines import health, launch, netns
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
    """Boot a machine from ``ref`` on ``request.network``: a kiln network is joined (made,
    its subnet chosen, its bridge made, as needed) before the boot, and left again when
    the launch fails; its forwarded ports are written once it runs."""
    started = time.monotonic()
    row = resolve.image(workspace, ref)
    enforce_trust(workspace, row)  # a policy requiring signatures refuses it before it boots
    image = resolve.load(workspace, row)
    home = workspace.home
    link = network.attach(home, request.name, request.network, request.ports)
    try:
        launched = launch.run(
            request, image, row.id, home, started, lambda: workspace.catalog, link
        )
    except health.NotReady:  # the machine stays, for a look inside
        _forward(home, link)
        raise
    except BaseException:
        if link is not None:
            network.detach(home, request.name)
        raise
    try:
        _forward(home, link)
    except KilnError:  # a machine without the ports it was asked for is no launch
        rm(workspace, request.name, with_volumes=False, force=True)
        raise
    return launched


def _forward(home: Home, link: netns.Attachment | None) -> None:
    if link is not None and link.ports:
        network.forwards(home)


def start(workspace: Workspace, request: StartRequest) -> launch.Launched:
    """Boot a stopped machine again, from the very image (by digest) it was launched from,
    with the address it keeps on its network."""
    home = workspace.home
    state = launch.stopped(home, request.name)
    name = state.image.partition(":")[0]
    row = resolve.image(workspace, f"{name}@{state.digest}")
    enforce_trust(workspace, row)
    image = resolve.load(workspace, row)
    link = network.attach_again(home, state)
    try:
        return launch.start(request, image, home, lambda: workspace.catalog, link)
    finally:
        _forward(home, link)


def ps(workspace: Workspace, include_removed: bool = False) -> list[dict[str, Any]]:
    """Every machine, with its network, address and forwarded ports (and where each is
    reached from this host: a forward does not answer on 127.0.0.1)."""
    from kiln.machines import manage

    rows = manage.ps(workspace.catalog, include_removed)
    reach = network.reach(workspace.home)
    for row in rows:
        row["forwards"] = reach.get(row["name"], {}).get("forwards", []) if row["ports"] else []
    return rows


def stop(workspace: Workspace, name: str, timeout: float) -> dict[str, Any]:
    from kiln.machines import manage

    try:
        return manage.stop(workspace.home, workspace.catalog, name, timeout)
    finally:
        network.forwards(workspace.home)


def rm(workspace: Workspace, name: str, with_volumes: bool, force: bool) -> manage.Removed:
    """Remove the machine; its network place (address, hosts lines, forwards) goes with
    it, and with the last machine of a network its bridge."""
    from kiln.machines import manage

    try:
        removed = manage.rm(workspace.home, workspace.catalog, name, with_volumes, force)
    except NotFound:
        network.detach(workspace.home, name)  # what a launch killed half-way left
        raise
    network.detach(workspace.home, name)
    return removed


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
