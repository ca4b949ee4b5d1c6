"""A cgroup of its own for every systemd-nspawn kiln starts.

The host has no system bus, so nspawn runs with ``--keep-unit --register=no``: it takes
the cgroup it is started in as its unit's and makes ``payload/`` (the container) and
``supervisor/`` in it. Started from one cgroup, two machines would share one payload
cgroup: each container's systemd would see the other's processes as its own, fail its
units now and then ("booted degraded"), and could kill them at its shutdown; a bake's
command started beside them would share it too. So every nspawn starts in
``<kiln's cgroup>/kiln/<name>`` of the hierarchies systemd uses (the named ``systemd``
one of cgroup v1, and the unified one), and that folder goes when the nspawn is over.

Where cgroups cannot be made (a read-only cgroupfs), commands start as before.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
OWN = Path("/proc/self/cgroup")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Moves the shell into each cgroup.procs it is given, then becomes the command.
ENTER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done;'
    ' exec "$@"'
)


def _mounts(mountinfo: Path = MOUNTINFO) -> dict[str, Path]:
    """The mount point of the unified hierarchy ("") and of v1's named systemd one."""
    found: dict[str, Path] = {}
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point = Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            found.setdefault("", point)
        elif tail[0] == "cgroup" and "name=systemd" in tail[2].split(","):
            found.setdefault("name=systemd", point)
    return found


def _tops(mountinfo: Path, own: Path) -> list[Path]:
    """``<kiln's cgroup>/kiln`` in each hierarchy nspawn and systemd use."""
    mounts = _mounts(mountinfo)
    out = []
    for line in own.read_text().splitlines():
        _number, controllers, path = line.split(":", 2)
        point = mounts.get(controllers)
        if point is not None:
            out.append(point / path.lstrip("/") / "kiln")
    return out


def folders(name: str, mountinfo: Path = MOUNTINFO, own: Path = OWN) -> list[Path]:
    """Where ``name``'s cgroup is in each hierarchy nspawn and systemd use."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a cgroup name kiln makes")
    return [top / name for top in _tops(mountinfo, own)]


def names(mountinfo: Path = MOUNTINFO, own: Path = OWN) -> list[str]:
    """The cgroups there are below ``<kiln's cgroup>/kiln``, in any of those hierarchies."""
    found: set[str] = set()
    try:
        tops = _tops(mountinfo, own)
    except OSError:
        return []
    for top in tops:
        with contextlib.suppress(OSError), os.scandir(top) as entries:
            found |= {
                e.name
                for e in entries
                if e.is_dir(follow_symlinks=False) and NAME.fullmatch(e.name)
            }
    return sorted(found)


def in_use(name: str) -> bool:
    """Whether any process is in cgroup ``name`` or a cgroup below it, in any hierarchy."""
    for folder in folders(name):
        for dirpath, _dirs, files in os.walk(folder):
            if "cgroup.procs" not in files:
                continue
            with contextlib.suppress(OSError):  # gone meanwhile: nobody is in it
                if Path(dirpath, "cgroup.procs").read_text().strip():
                    return True
    return False


def changed(name: str) -> float | None:
    """When cgroup ``name`` was made or last had a cgroup made or removed in it (its
    folders' newest mtime), or None where it does not exist."""
    times = []
    for folder in folders(name):
        with contextlib.suppress(OSError):
            times.append(folder.stat().st_mtime)
    return max(times, default=None)


def enter(name: str, argv: list[str]) -> list[str]:
    """``argv`` started in a fresh cgroup ``name`` (an old one of that name is removed
    first); ``argv`` itself when no cgroup can be made here."""
    remove(name)
    made = []
    try:
        for folder in folders(name):
            folder.mkdir(parents=True, exist_ok=True)
            made.append(folder / "cgroup.procs")
    except (OSError, ValueError):
        remove(name)
        return argv
    if not made:
        return argv
    return ["/bin/sh", "-c", ENTER, "sh", str(len(made)), *map(str, made), *argv]


def remove(name: str) -> None:
    """Remove cgroup ``name`` with what nspawn made in it, once no process is left in it
    (a cgroup in use stays, and goes at the next removal of that name)."""
    try:
        found = folders(name)
    except (OSError, ValueError):
        return
    for folder in found:
        if not folder.is_dir():
            continue
        for dirpath, dirnames, _files in sorted(os.walk(folder), reverse=True):
            for sub in dirnames:
                with contextlib.suppress(OSError):  # in use: left for the next removal
                    os.rmdir(os.path.join(dirpath, sub))
        with contextlib.suppress(OSError):
            folder.rmdir()
