"""Build roots: a scratch folder per bake, and the overlay that stacks parent layers.

Both are context managers so a failed bake always unmounts and cleans up, unless the
caller asked to keep the root for a look inside.
"""

from __future__ import annotations

import shutil
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


def remove_tree(path: Path) -> None:
    """Remove a build folder; never crosses into a mount that is still there."""
    if path.exists():
        proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])


def mount_point(path: Path) -> bool:
    return path.is_mount()


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
