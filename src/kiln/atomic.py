"""How kiln writes files and folders: atomically (temp file in the same folder, fsync,
rename, fsync the folder), and always with a mode of its own, never the caller's umask."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kiln import locks

FOLDER_MODE = 0o755


def make_dirs(path: Path, mode: int = FOLDER_MODE) -> Path:
    """Make ``path`` and the parents it lacks, each with ``mode`` whatever the umask (a
    caller's ``umask 077`` would leave a machine's ``/`` or a layer's root 0700); a folder
    that exists keeps its mode (a machine may have changed its own ``/``)."""
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode)
        except FileExistsError:
            continue  # made meanwhile by another kiln: its maker set the mode
        os.chmod(folder, mode)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old content or the new, never a part.

    With ``tmp_dir`` (a folder of owned entries on the same file system, such as a
    store's ``tmp/``) the temp file is made there and its flock held until the rename,
    so ``kiln gc`` can tell the leftover of a dead writer from a write in flight.
    """
    make_dirs(path.parent)
    held: locks.Held | None = None
    if tmp_dir is not None:
        tmp_path, fd, held = locks.owned_file(tmp_dir, f"write-{path.name[:16]}-")
        tmp = str(tmp_path)
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if held is not None:
            held.release()
    fsync_dir(path.parent)
