"""What systemd-nspawn leaves outside a machine's folder, and who removes it.

Every nspawn kiln starts (a machine's, a build command's) has a cgroup of its own
(kiln.cgroups) and, while it runs, ``/run/systemd/nspawn/propagate/<its machine name>``.
Both are host-wide, so both are named after the home (kiln.sandbox.machine_name): ``kiln
rm`` removes its machine's, and ``kiln gc`` what this home's nspawns left when they were
killed (a crash, SIGKILL, a poweroff inside a machine), never another home's, never one
in use, and never one made in the last :data:`GRACE` seconds (a launch or a build command
about to enter it).

A machine on a kiln network has a namespace of its own and the host end of its veth
(kiln.machines.netns) while it runs: a stop or ``kiln rm`` removes them once nspawn is gone,
and ``kiln gc`` those of this home's machines that no longer run (nspawn killed, kiln killed
mid-launch), never one of a launch under way (its state file does not read yet) nor of a
``kiln start`` preparing it (it holds :func:`preparing` shared, gc exclusively).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from kiln import cgroups, locks
from kiln.errors import KilnError
from kiln.home import Home
from kiln.machines import netns, process
from kiln.machines.folder import Folder, each, load, machines_dir
from kiln.sandbox import machine_cgroup, machine_name, of_home
from kiln.store.gc import Item

PROPAGATE = Path("/run/systemd/nspawn/propagate")
GRACE = 60.0
KIND = "nspawn"  # gc's item kind for these
NETNS_KIND = "netns"  # a machine's namespace and veth
LINK_KIND = "link"  # a veth or bridge interface


def preparing(home: Home) -> contextlib.AbstractContextManager[None]:
    """Held shared while a launch or start makes a machine's namespace and boots it."""
    return locks.locked(home.locks / "netns.lock", shared=True)


def forget(home_id: str, name: str) -> None:
    """What the stopped machine ``name`` leaves: an empty propagate folder (nspawn removes
    it itself when it exits cleanly) and its cgroup."""
    with contextlib.suppress(OSError):
        (PROPAGATE / machine_name(home_id, name)).rmdir()
    cgroups.remove(machine_cgroup(home_id, name))
    netns.remove(home_id, name)


def _live(home: Home) -> set[str]:
    """The nspawn names of this home's machines that run, or may: a state file that does
    not read yet is a launch under way (or a machine kiln rm --force is for)."""
    return {
        machine_name(home.id, folder.name)
        for folder, state in each(home)
        if state is None or process.running(state)
    }


def _cgroup_of(nspawn_name: str) -> str:
    return nspawn_name if nspawn_name.startswith("build-") else f"machine-{nspawn_name}"


def sweep(
    home: Home,
    dry_run: bool,
    *,
    propagate: Path | None = None,
    grace: float | None = None,
) -> list[Item]:
    """Remove (``dry_run``: list) this home's cgroups that no process is in and its
    propagate folders of nspawns that are gone."""
    propagate = PROPAGATE if propagate is None else propagate
    grace = GRACE if grace is None else grace
    home_id, now = home.id, time.time()
    live = _live(home)
    out = []
    for name in cgroups.names():
        if not of_home(home_id, name) or name.removeprefix("machine-") in live:
            continue
        made = cgroups.changed(name)
        if made is None or now - made < grace or cgroups.in_use(name):
            continue
        if not dry_run:
            cgroups.remove(name)
            if cgroups.changed(name) is not None:
                continue  # a process entered it meanwhile: the next gc
        out.append(Item(KIND, str(cgroups.folders(name)[0]), 0))
    found: list[os.DirEntry[str]] = []
    with contextlib.suppress(OSError), os.scandir(propagate) as entries:
        found = sorted(entries, key=lambda entry: entry.name)
    for entry in found:
        name = entry.name
        if not of_home(home_id, name) or name in live or cgroups.in_use(_cgroup_of(name)):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < grace:
                continue
            if dry_run:
                if os.listdir(entry.path):
                    continue
            else:
                os.rmdir(entry.path)  # empty, as nspawn leaves it; anything else stays
        except OSError:
            continue
        out.append(Item(KIND, entry.path, 0))
    return out


def _live_machines(home: Home) -> set[str]:
    """This home's machines that run, or may: a state file that does not read is a launch
    under way unless it is older than :data:`GRACE` and no nspawn boots its root (a kiln
    killed mid-launch)."""
    live = _live(home)
    out = set()
    for name in _machine_names(home):
        if machine_name(home.id, name) not in live:
            continue
        folder = Folder(machines_dir(home) / name)
        try:
            load(folder)
        except KilnError:
            try:
                old = time.time() - folder.state_file.stat().st_mtime > GRACE
            except OSError:
                old = False
            if old and not process.nspawns_of(folder.root):
                continue
        out.add(name)
    return out


def _machine_names(home: Home) -> list[str]:
    top = machines_dir(home)
    return sorted(path.name for path in top.iterdir()) if top.is_dir() else []


def sweep_netns(home: Home, dry_run: bool) -> list[Item]:
    """Remove (``dry_run``: list) this home's machine namespaces and veths that no running
    machine (nor a launch under way) holds."""
    out = []
    gone: set[str] = set()
    with locks.locked(home.locks / "netns.lock"):
        live = _live_machines(home)
        prefix = netns.netns_prefix(home.id)
        for ns in netns.namespaces(prefix):
            machine = ns.removeprefix(prefix)
            if machine in live:
                continue
            if not dry_run:
                netns.remove(home.id, machine)
            out.append(Item(NETNS_KIND, str(netns.NETNS_DIR / ns), 0))
            gone.add(netns.veth_name(home.id, machine))  # goes with its namespace
        held = {netns.veth_name(home.id, machine) for machine in live} | gone
        for link in netns.links(netns.veth_prefix(home.id)):
            if link in held:
                continue
            if not dry_run:
                netns.remove_link(link)
            out.append(Item(LINK_KIND, link, 0))
    return out
