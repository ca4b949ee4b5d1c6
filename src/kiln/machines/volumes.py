"""State volumes: each ``[runtime] state`` path is a host folder bound into the machine.

The folder lives outside the overlay, so the machine's writes there never reach its upper
dir, and ``kiln rm`` + ``kiln run`` of a newer image with the same volume keeps the data.
By default a state path's folder is ``volumes/<escaped path>`` in the machine's folder
(kept by ``kiln rm``, removed by ``kiln rm --volumes``); ``--volume PATH=DIR`` puts it in
DIR instead, which kiln never removes. A new, empty volume starts with what the image has
at that path, owners and modes included.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import BadInput
from kiln.machines.folder import Folder, make_dir
from kiln.rootpath import DIR, Root

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def escape(path: str) -> str:
    """A state path as one folder name, the way systemd-escape --path does it."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-"
    out = []
    for index, char in enumerate("/".join(parts)):
        if char == "/":
            out.append("-")
        elif char in SAFE and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
    return "".join(out)


@dataclass(frozen=True)
class Volume:
    path: str  # inside the machine
    source: Path  # on the host
    managed: bool  # in the machine's folder (kiln rm --volumes removes it)


def plan(folder: Folder, state: Sequence[str], given: Sequence[str]) -> list[Volume]:
    """One volume per state path; ``given`` holds --volume PATH=DIR overrides."""
    declared = {posixpath.normpath(p): p for p in state}
    chosen: dict[str, Path] = {}
    problems = []
    for item in given:
        path, sep, source = item.partition("=")
        norm = posixpath.normpath(path) if path.startswith("/") else path
        if not sep or not source:
            problems.append(f"--volume {item!r}: give PATH=DIR")
        elif norm not in declared:
            listed = ", ".join(sorted(declared)) or "none"
            problems.append(f"--volume {path}: not a state path of the image (it has: {listed})")
        else:
            chosen[norm] = Path(source).absolute()
    if problems:
        raise BadInput("\n".join(problems), hint="volumes hold the image's [runtime] state paths")
    return [
        Volume(p, chosen[p], False) if p in chosen else Volume(p, folder.volumes / escape(p), True)
        for p in sorted(declared)
    ]


def prepare(volume: Volume, root: Path) -> bool:
    """Make the volume's folder; a new one starts as a copy of the image's path in ``root``.

    The image's path is resolved inside the image (kiln.rootpath) and copied from the fd
    that resolution gave, so no symlink in the image leads the copy onto the host.
    Returns True when the volume was new.
    """
    source = volume.source
    if source.is_dir() and any(source.iterdir()):
        return False
    if source.exists() and not source.is_dir():
        raise BadInput(f"volume {source} for {volume.path} is not a folder")
    make_dir(source)  # 0755 whatever the umask, unless the image's path says otherwise
    with Root(root) as image:
        try:
            folder = image.open(volume.path, DIR)
        except (FileNotFoundError, NotADirectoryError):
            return True  # nothing in the image to start from
        try:
            st = os.fstat(folder)
            os.chown(source, st.st_uid, st.st_gid)
            os.chmod(source, st.st_mode & 0o7777)
            if os.listdir(folder):
                # cp -a never dereferences; it starts from the folder the fd holds
                proc.run(["cp", "-a", "--", f"/proc/{os.getpid()}/fd/{folder}/.", str(source)])
        finally:
            os.close(folder)
    return True
