"""sha256 of many files of a few trees, hashed on every core (``kiln drift --deep``).

A deep drift check reads every file a machine sees: thousands of small ones, whose cost is
the system calls and Python's work per file more than their bytes, and a few hundred
large ones. Threads share one interpreter lock, of which only reading and hashlib let go,
so the work goes to forked children, one per core, fed as the trees are listed
(:class:`Hashing`). Every file is opened through kiln.rootpath under its tree's root and
never followed; one that is no regular file any more when it is opened is not read.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import signal
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import proc
from kiln.digests import CHUNK
from kiln.errors import KilnError
from kiln.rootpath import DIR, Root
from kiln.store import inventory

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


class Trees:
    """A few trees (unpacked layers, a machine's upper dir) whose files are hashed by index."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.roots = [Root(d) for d in dirs]

    def close(self) -> None:
        for root in self.roots:
            root.close()

    def sha256s(self, files: Iterable[File], ahead: bool = False) -> dict[tuple[int, str], str]:
        """sha256 of each (tree, path, size) file, by (tree, path), one after another;
        each folder is opened once for all its files. Hashing ``ahead`` of being asked
        (:class:`Hashing`), a file or folder gone since it was listed is left out, not
        raised: the caller asks again for what it needs."""
        by_folder: dict[tuple[int, str], list[tuple[str, int]]] = defaultdict(list)
        for index, path, size in files:
            parent, _, name = path.rpartition("/")
            by_folder[(index, parent)].append((name, size))
        buffer = bytearray(CHUNK)
        out: dict[tuple[int, str], str] = {}
        for (index, parent), names in by_folder.items():
            try:
                fd = self.roots[index].open(parent or "/", DIR)
            except (FileNotFoundError, NotADirectoryError):
                if ahead:
                    continue
                raise
            try:
                for name, size in names:
                    try:
                        found = inventory.open_regular(fd, name)
                    except FileNotFoundError:
                        if ahead:
                            continue
                        raise
                    out[(index, f"{parent}/{name}")] = (
                        inventory.NOT_REGULAR
                        if found is None
                        else inventory.sha256_of(*found, buffer if size >= LARGE else None)
                    )
            finally:
                os.close(fd)
        return out


File = tuple[int, str, int]  # a tree's index, a path in it, the file's size
LARGE = 1 << 16  # bytes from which a file is read into a reused buffer, not one read of its size
PER_FILE = 1 << 14  # what hashing a file costs beyond its bytes, counted in bytes


def workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


class Hashing:
    """Files hashed on every core while this process goes on with other work.

    Made before the trees are listed: one forked child per core, each hashing the files
    sent to it (:meth:`send`, as each tree is listed) until :meth:`result` ends the
    sending. Forked this early, a child shares little of this process's memory, so
    neither side pays to copy the pages of the listings the other one then writes to.
    Each batch is dealt by what its files cost (their bytes, plus the system calls and
    Python's work that every file costs however small: a layer holds thousands).
    Processes, not threads: threads share one interpreter lock, of which only reading and
    hashlib let go. In a process that already runs threads (forking it is not safe) the
    batches go to threads instead."""

    def __init__(self, trees: Trees) -> None:
        self.trees = trees
        self.children: list[_Child] = []
        self.pool: ThreadPoolExecutor | None = None
        self.futures: list[Future[dict[tuple[int, str], str]]] = []
        self.loads = [0] * workers()
        if threading.active_count() > 1:
            from concurrent.futures import ThreadPoolExecutor  # ~5 ms to import: only here

            self.pool = ThreadPoolExecutor(len(self.loads), thread_name_prefix="kiln-drift")
            return
        try:
            for _ in self.loads:
                self.children.append(_Child(trees, [c.into for c in self.children]))
        except BaseException:
            self.stop()
            raise

    def send(self, files: Iterable[File]) -> None:
        """Deal ``files`` among the workers, each to the one that costs least so far."""
        shares: list[list[File]] = [[] for _ in self.loads]
        loads = self.loads
        for file in files:
            i = loads.index(min(loads))
            shares[i].append(file)
            loads[i] += PER_FILE + file[2]
        for i, share in enumerate(shares):
            if self.pool is not None:
                self.futures.append(self.pool.submit(self.trees.sha256s, share, True))
            elif share:
                self.children[i].send(share)

    def result(self) -> dict[tuple[int, str], str]:
        for child in self.children:
            child.done()
        out: dict[tuple[int, str], str] = {}
        for child in self.children:
            out.update(child.result())
        for future in self.futures:
            out.update(future.result())
        return out

    def stop(self) -> None:
        """End what is still running (children are killed and reaped)."""
        for child in self.children:
            child.stop()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


class _Child:
    """A forked process hashing the files sent to it down a pipe (index, size, path, each
    ended by a NUL, which no path holds), as they come. It writes the digests (one line
    each, in the order sent; empty for a file gone since it was listed) or the exception
    it met (pickled) to an anonymous file."""

    def __init__(self, trees: Trees, others: Sequence[int]) -> None:
        """``others``: the pipes into the children made before, which this one closes
        (holding one open, it would keep that child from seeing the end of its files)."""
        self.keys: list[tuple[int, str]] = []
        self.out = os.memfd_create("kiln-drift", os.MFD_CLOEXEC)
        read, self.into = os.pipe2(os.O_CLOEXEC)
        with suppress(OSError):  # room for every path at once: sending never waits
            fcntl.fcntl(self.into, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self.pid = proc.fork(lambda: _child(trees, read, self.out), close=(self.into, *others))
        except BaseException:
            for fd in (self.out, read, self.into):
                os.close(fd)
            raise
        os.close(read)

    def send(self, files: Sequence[File]) -> None:
        self.keys += [(index, path) for index, path, _size in files]
        fields = [f"{index}\0{size}\0{path}\0" for index, path, size in files]
        view = memoryview(os.fsencode("".join(fields)))
        try:
            while view:
                view = view[os.write(self.into, view) :]
        except BrokenPipeError:
            self.done()  # the child ended: result() says why

    def done(self) -> None:
        """No more files: the child sees the pipe's end."""
        if self.into >= 0:
            os.close(self.into)
            self.into = -1

    def result(self) -> dict[tuple[int, str], str]:
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = -1
        data = os.pread(self.out, os.fstat(self.out).st_size, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            found = zip(self.keys, data.decode().split("\n"), strict=True) if self.keys else ()
            return {key: digest for key, digest in found if digest}  # '': gone
        if code == 1:
            raise pickle.loads(data)
        raise KilnError(f"the process hashing files for kiln drift --deep ended with {code}")

    def stop(self) -> None:
        if self.pid > 0:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = -1
        for fd in (self.out, self.into):
            if fd >= 0:
                os.close(fd)
        self.out = self.into = -1


PIPE_BYTES = 1 << 20


def _child(trees: Trees, pipe: int, out: int) -> int:
    """Hash the files sent down ``pipe`` in a forked child, each batch as it comes: 0 when
    the digests were written to ``out``, 1 when an exception was."""
    gc.disable()  # a collection would touch (and so copy) every object of the parent
    try:
        digests: list[str] = []
        fields: list[bytes] = []
        tail = b""
        while chunk := os.read(pipe, PIPE_BYTES):
            *more, tail = (tail + chunk).split(b"\0")
            fields += more
            whole = len(fields) - len(fields) % 3
            files = [
                (int(fields[i]), os.fsdecode(fields[i + 2]), int(fields[i + 1]))
                for i in range(0, whole, 3)
            ]
            del fields[:whole]
            found = trees.sha256s(files, ahead=True)
            digests += (found.get((index, path), "") for index, path, _ in files)
        if fields or tail:
            raise KilnError("kiln drift --deep: a file was sent to be hashed only in part")
        data, code = "\n".join(digests).encode(), 0
    except BaseException as exc:
        try:
            data = pickle.dumps(exc)
        except Exception:
            data = pickle.dumps(KilnError(f"kiln drift --deep: hashing failed: {exc}"))
        code = 1
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]
    return code
