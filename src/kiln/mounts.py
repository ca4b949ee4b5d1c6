"""Mounts and the processes working in a folder: overlays, unmounting, clearing a tree.

The overlay stacks read-only lower layers under an upper dir that collects changes (a
bake's new layer, a machine's writes). Removing a folder first unmounts whatever is
mounted below it, deepest first, so rm never reaches through a bind mount; a folder a
dead process left behind is cleared by killing whatever still works in it first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from kiln import proc
from kiln.atomic import make_dirs
from kiln.errors import StoreError

KILL_WAIT = 10.0  # seconds for a killed process to be gone


class Overlay:
    """overlayfs: ``lowers`` (top first) read-only, ``upper`` collects the changes."""

    def __init__(self, lowers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
        self.lowers = list(lowers)
        self.upper, self.work, self.target = upper, work, target
        self.mounted = False

    def options(self) -> str:
        lower = ":".join(str(p) for p in self.lowers)
        return f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"

    def mount(self) -> Overlay:
        # the upper dir's mode is the merged root's: never the caller's umask
        make_dirs(self.upper)
        make_dirs(self.work, 0o700)  # overlayfs alone uses it
        make_dirs(self.target)
        proc.run(["mount", "-t", "overlay", "overlay", "-o", self.options(), str(self.target)])
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            proc.run(["umount", str(self.target)])
            self.mounted = False

    def __enter__(self) -> Overlay:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_below(path: Path) -> None:
    for point in mounts_below(path):
        proc.run(["umount", "--lazy", str(point)])


def remove_tree(path: Path) -> None:
    """Remove a build folder, unmounting whatever a failed tool left mounted inside first.

    A bind mount of the same file system is not stopped by --one-file-system, so without
    this, rm would reach through it into the mounted folder.
    """
    if path.exists():
        unmount_below(path)
        proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])


def _below(candidate: str, folder: str) -> bool:
    return candidate == folder or candidate.startswith(folder + "/")


def processes_in(folder: Path) -> list[int]:
    """Processes working in ``folder``: their root or cwd is at or below it, or an
    argument names it (systemd-nspawn --directory=..., tar --directory=..., mmdebstrap)."""
    target = str(folder.resolve())
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            links = [os.readlink(f"/proc/{pid}/root"), os.readlink(f"/proc/{pid}/cwd")]
        except OSError:
            links = []
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            argv = []
        words = [word.split("=", 1)[-1] for word in argv] + argv
        if any(_below(link, target) for link in links) or any(
            _below(word, target) or word.startswith(target + "/") for word in words if word
        ):
            found.append(pid)
    return found


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while not all(_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            alive = [pid for pid in pids if not _gone(pid)]
            raise StoreError(
                f"processes {alive} did not die after SIGKILL",
                hint="they may be stuck in the kernel (D state); run 'kiln gc' again later",
            )
        time.sleep(0.02)
