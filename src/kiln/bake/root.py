"""Build roots: a scratch folder per bake, and the overlay that stacks parent layers.

Both are context managers so a failed bake always unmounts and cleans up, unless the
caller asked to keep the root for a look inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiln import proc


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
        for path in (self.upper, self.work, self.target):
            path.mkdir(parents=True, exist_ok=True)
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
