"""Ownership of shared things in KILN_HOME, told by flock(2), which the kernel drops on death.

A live kiln process holds an exclusive flock on what it owns: a build folder, a scratch
folder or temp file under ``tmp/``, a named lock under ``locks/``. A dead one holds
nothing, so ``kiln gc`` (or the next bake) can tell a leftover from work in progress by
trying the lock, never by age. Lock file descriptors are close-on-exec (Python's default),
so a child such as systemd-nspawn never keeps a dead kiln's lock alive.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path


class Held:
    """An exclusive flock on a file or folder, held until ``release`` (or process death)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open(path: Path, directory: bool, create: bool = True) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    if directory:
        return os.open(path, flags | os.O_DIRECTORY)
    return os.open(path, flags | (os.O_CREAT if create else 0), 0o600)


def hold(path: Path, *, directory: bool = False, wait: bool = True) -> Held | None:
    """Take the flock on ``path`` (a lock file, made if missing, or a folder).

    With ``wait=False`` return None at once when another process holds it. A lock file
    that was removed (``remove_unheld``) while we waited is opened afresh, so two holders
    never hold two different files of one name.
    """
    while True:
        fd = _open(path, directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        if directory or _same_file(fd, path):
            return Held(fd, path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def remove_unheld(path: Path) -> bool:
    """Remove the lock file ``path`` when nobody holds it (True when it was removed)."""
    held = hold(path, wait=False)
    if held is None:
        return False
    try:
        path.unlink(missing_ok=True)  # under the lock: a waiter re-opens a new file
    finally:
        held.release()
    return True


@contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, waiting for any other holder first;
    ``shared`` lets other shared holders in at the same time (readers of a resource that
    an exclusive holder changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not shared:
        held = hold(path)
        assert held is not None
        with held:
            yield
        return
    fd = _open(path, directory=False)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def creation_lock(parent: Path) -> Path:
    """``.<folder>.lock`` beside a folder of owned entries: held shared while one is made."""
    return parent.with_name(f".{parent.name}.lock")


def owned_dir(parent: Path, prefix: str) -> tuple[Path, Held]:
    """Make a new folder ``parent/<prefix><random>`` and hold its flock.

    The folder is a leftover exactly when nobody holds its lock: that is how ``kiln gc``
    finds the scratch and build folders of a dead process.
    """
    with _creating(parent):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        path.mkdir(mode=0o700)
        held = hold(path, directory=True)
    assert held is not None
    return path, held


def owned_file(parent: Path, prefix: str) -> tuple[Path, int, Held]:
    """Make a new file ``parent/<prefix><random>`` open for writing, with its flock held.

    Returns the path, a write descriptor (the caller's to close) and the lock; keep the
    lock until the file has been renamed into place, so gc never takes a file in flight.
    """
    with _creating(parent):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        held = hold(path)
    assert held is not None
    return path, fd, held


def _creating(parent: Path) -> AbstractContextManager[None]:
    """Shared hold of the creation lock between making an entry and locking it; gc holds it
    exclusively while it decides what is abandoned, so it never sees an entry in between."""
    parent.mkdir(parents=True, exist_ok=True)
    return locked(creation_lock(parent), shared=True)


def abandoned(parent: Path) -> Iterator[tuple[Path, Held]]:
    """Entries of ``parent`` that no live process holds, each yielded with its lock taken
    (so nobody can take it over while the caller removes it). Hold the yielded lock until
    the entry is gone, then release it."""
    if not parent.is_dir():
        return
    with locked(creation_lock(parent)):
        found: list[tuple[Path, Held]] = []
        for path in sorted(parent.iterdir()):
            held = _try_hold(path)
            if held is not None:
                found.append((path, held))
    yield from found


def _try_hold(path: Path) -> Held | None:
    """The entry's flock if nobody holds it (an odd entry, such as a symlink, counts as
    abandoned and gets a lock of its own kind: a descriptor of the parent folder)."""
    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
            return Held(fd, path)
        fd = _open(path, path.is_dir(), create=False)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return Held(fd, path)


def is_abandoned(path: Path) -> bool:
    """True when no live process holds the flock on ``path`` (a file or a folder)."""
    held = _try_hold(path)
    if held is None:
        return False
    held.release()
    return True


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[str]:
    """An owned scratch folder for the block (``tempfile.TemporaryDirectory``'s shape),
    removed at the end; its flock tells ``kiln gc`` it is in use."""
    path, held = owned_dir(parent, prefix)
    try:
        yield str(path)
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            held.release()
