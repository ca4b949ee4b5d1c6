"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kiln import locks


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
    path.parent.mkdir(parents=True, exist_ok=True)
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
