"""The resolver under kiln.rootpath: a path inside a root resolved the way the root itself
would resolve it, and read.

An absolute symlink points into the root, ``..`` stops at the root, and no symlink or
mount point leads out. The kernel does it (openat2 with RESOLVE_IN_ROOT); where it
cannot, a walk component by component with O_NOFOLLOW does the same. What is opened is a
file descriptor: the parent folder is opened inside the root and the last component is
acted on with ``dir_fd=`` and without following it, so swapping a folder for a symlink
half-way cannot redirect the operation onto the host. Callers use
:class:`kiln.rootpath.Root`, which adds the operations on the tree.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from kiln.errors import BadInput, KilnError

MAX_LINKS = 40

_SYS_OPENAT2 = 437  # the same number on every architecture
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
PATH = os.O_PATH | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode, resolve)
    while True:
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code), path)


def _kernel_resolves() -> bool:
    try:
        os.close(_openat2(-100, "/", DIR, RESOLVE_IN_ROOT))  # AT_FDCWD
    except OSError:
        return False
    return True


OPENAT2 = _kernel_resolves()


def parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Resolver:
    """A folder seen as the root of a file system: every path given is resolved inside it."""

    def __init__(self, path: Path | str, *, kernel: bool | None = None) -> None:
        self.path = Path(path)
        self.kernel = OPENAT2 if kernel is None else kernel
        self.fd = os.open(self.path, DIR)
        self._mount = _mount_id(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # --- resolution ---

    def _error(self, path: str, exc: OSError) -> KilnError:
        if exc.errno == errno.ELOOP:
            return BadInput(f"too many symlinks resolving {path} in {self.path}")
        return KilnError(f"{path} in {self.path} leads onto another mount point; not followed")

    def open(self, path: str, flags: int = DIR, follow: bool = True) -> int:
        """An fd for ``path`` resolved inside the root (the caller closes it)."""
        flags |= os.O_CLOEXEC if flags & os.O_PATH else os.O_CLOEXEC | os.O_NOCTTY
        if not follow:
            flags |= os.O_NOFOLLOW
        try:
            if self.kernel:
                resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
                for _attempt in range(16):
                    try:
                        return _openat2(self.fd, path, flags, resolve)
                    except OSError as exc:
                        if exc.errno != errno.EAGAIN:  # a rename raced the walk: try again
                            raise
            return self._walk(path, flags)
        except OSError as exc:
            too_many = exc.errno == errno.ELOOP and (follow or flags & os.O_PATH)
            if exc.errno == errno.EXDEV or too_many:
                raise self._error(path, exc) from None
            raise

    def _walk(self, path: str, flags: int) -> int:
        """The portable fallback: one component at a time, never letting the host follow."""
        todo = list(reversed(parts(path)))
        stack: list[int] = []  # fds of the folders walked through, below the root
        links = 0
        finished = False
        try:
            while todo:
                part = todo.pop()
                here = stack[-1] if stack else self.fd
                finished = False
                if part == "..":
                    if stack:
                        os.close(stack.pop())
                    continue
                last = not todo
                try:
                    fd = os.open(
                        part,
                        (flags if last else PATH | os.O_DIRECTORY) | os.O_NOFOLLOW,
                        dir_fd=here,
                    )
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not stat.S_ISLNK(os.stat(part, dir_fd=here, follow_symlinks=False).st_mode):
                        raise
                    if last and flags & os.O_NOFOLLOW:
                        raise
                    fd = -1
                if (
                    fd >= 0
                    and stat.S_ISLNK(os.fstat(fd).st_mode)
                    and not (last and flags & os.O_NOFOLLOW)
                ):
                    os.close(fd)  # O_PATH opened the link itself
                    fd = -1
                if fd < 0:
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop())
                    todo.extend(reversed(parts(target)))
                    continue
                if _mount_id(fd) != self._mount:
                    os.close(fd)
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
                stack.append(fd)
                finished = last
            if stack and finished:
                return stack.pop()  # the last component, opened with the caller's flags
            base = stack[-1] if stack else self.fd  # the path ended in "..", or was the root
            return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=base)
        finally:
            for fd in stack:
                os.close(fd)

    @contextmanager
    def directory(self, path: str = "/") -> Iterator[int]:
        """A readable fd of the folder at ``path`` (symlinks followed inside the root)."""
        fd = self.open(path, DIR)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """The fd of ``path``'s folder and its last component, to act on with dir_fd=."""
        names = parts(path)
        if not names or names[-1] == "..":
            raise BadInput(f"{path!r} does not name a file inside the image")
        with self.directory("/".join(names[:-1]) or "/") as fd:
            yield fd, names[-1]

    # --- reading ---

    def lstat(self, path: str) -> os.stat_result:
        if not parts(path):
            return os.fstat(self.fd)
        with self.parent(path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def stat(self, path: str) -> os.stat_result:
        """What ``path`` is, symlinks followed inside the root."""
        fd = self.open(path, PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def exists(self, path: str, follow: bool = False) -> bool:
        try:
            self.stat(path) if follow else self.lstat(path)
        except (FileNotFoundError, NotADirectoryError, BadInput):
            return False  # BadInput: a symlink loop on the way
        return True

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def open_file(self, path: str, flags: int = os.O_RDONLY, follow: bool = True) -> int:
        """An fd of the regular file at ``path``; anything else (FIFO, device) is refused."""
        if flags & os.O_CREAT:
            raise ValueError("use write_file to create a file")
        fd = self.open(path, PATH, follow=follow)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadInput(f"{path} in {self.path} is not a regular file")
            return os.open(fd_path(fd), flags | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(fd)

    def read_bytes(self, path: str, limit: int = 16 << 20) -> bytes:
        fd = self.open_file(path)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise BadInput(f"{path} in {self.path} is larger than {limit} bytes")
        return data

    def read_text(self, path: str, limit: int = 16 << 20) -> str:
        return self.read_bytes(path, limit).decode(errors="replace")

    def readlink(self, path: str) -> str:
        with self.parent(path) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def listdir(self, path: str = "/") -> list[str]:
        with self.directory(path) as fd:
            return sorted(os.listdir(fd))

    def _child_dir(self, fd: int, name: str, skip_mounts: bool = False) -> int:
        """Open a folder right below ``fd`` without following a symlink or crossing a mount."""
        try:
            if self.kernel:
                child = _openat2(
                    fd,
                    name,
                    DIR | os.O_NOFOLLOW,
                    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV,
                )
            else:
                child = os.open(name, DIR | os.O_NOFOLLOW, dir_fd=fd)
                if _mount_id(child) != self._mount:
                    os.close(child)
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), name)
        except OSError as exc:
            if exc.errno == errno.EXDEV and skip_mounts:
                return -1
            if exc.errno == errno.EXDEV:
                raise KilnError(f"{name} in {self.path} is a mount point; not entered") from None
            raise
        return child
