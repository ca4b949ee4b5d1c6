"""The one way kiln touches a path inside a root: a build root, an imported tree, a layer.

A path inside a root is resolved the way the root itself would resolve it: an absolute
symlink points into the root, ``..`` stops at the root, and no symlink or mount point
leads out. The kernel does it (openat2 with RESOLVE_IN_ROOT); where it cannot, a walk
component by component with O_NOFOLLOW does the same. Every operation then works on file
descriptors: the parent folder is opened inside the root and the last component is
acted on with ``dir_fd=`` and without following it, so swapping a folder for a symlink
half-way cannot redirect the operation onto the host.

    with Root(build_root) as root:
        root.write_file("/var/run/x", b"...")     # lands at build_root/run/x
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from kiln.errors import BadInput, KilnError

MAX_LINKS = 40
CHUNK = 1 << 20

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


def _entries(fd: int) -> dict[str, os.stat_result]:
    return {
        name: os.stat(name, dir_fd=fd, follow_symlinks=False) for name in sorted(os.listdir(fd))
    }


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Root:
    """A folder seen as the root of a file system: every path given is inside it."""

    def __init__(self, path: Path | str, *, kernel: bool | None = None) -> None:
        self.path = Path(path)
        self.kernel = OPENAT2 if kernel is None else kernel
        self.fd = os.open(self.path, DIR)
        self._mount = _mount_id(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

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
            return os.open(_fd_path(fd), flags | os.O_CLOEXEC | os.O_NOCTTY)
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

    def walk(self, path: str = "/") -> Iterator[tuple[str, int, dict[str, os.stat_result]]]:
        """Top-down (folder, its fd, {name: lstat}) below ``path``, never following a symlink
        and never entering another mount; drop a name from the dict to skip that folder.

        Only the folders from ``path`` down to the current one are held open."""
        start = "/".join(parts(path))
        fd = self.open(path, DIR)
        stack: list[tuple[str, int, Iterator[str] | None, dict[str, os.stat_result]]] = []
        try:
            stack.append((start, fd, None, {}))
            stack[-1] = (start, fd, None, _entries(fd))
            while stack:
                rel, fd, children, entries = stack[-1]
                if children is None:
                    yield rel, fd, entries
                    names = [n for n, st in entries.items() if stat.S_ISDIR(st.st_mode)]
                    children = iter(names)
                    stack[-1] = (rel, fd, children, entries)
                name = next(children, None)
                if name is None:
                    stack.pop()
                    os.close(fd)
                    continue
                try:
                    child = self._child_dir(fd, name, skip_mounts=True)
                except FileNotFoundError:
                    continue  # removed while we walked
                if child >= 0:
                    stack.append((_join(rel, name), child, None, {}))
                    stack[-1] = (_join(rel, name), child, None, _entries(child))
        finally:
            for item in stack:
                os.close(item[1])

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

    def glob(self, pattern: str) -> list[str]:
        """Paths (as '/a/b') matching ``pattern``: ``*``, ``?``, ``[...]`` within a name
        (dot files too), ``**`` any depth. Literal folders are resolved inside the root;
        wildcards only descend into real folders."""
        found: list[str] = []
        with suppress(FileNotFoundError, NotADirectoryError, BadInput):
            self._match("", parts(pattern), found)
        return found

    def _match(self, rel: str, names: list[str], found: list[str]) -> None:
        if not names:
            found.append("/" + rel)
            return
        head, rest = names[0], names[1:]
        if head == "**":
            if not rest:
                try:
                    for folder, _fd, entries in self.walk(rel or "/"):
                        if folder == rel and rel:
                            found.append("/" + rel)  # as Python's glob: the folder itself too
                        found.extend(f"/{folder}/{n}" if folder else f"/{n}" for n in entries)
                except (FileNotFoundError, NotADirectoryError, BadInput):
                    pass
                return
            self._match(rel, rest, found)
            for name in self._entries(rel, dirs_only=True):
                self._match(_join(rel, name), names, found)
        elif any(char in head for char in "*?["):
            for name in self._entries(rel, dirs_only=bool(rest)):
                if fnmatch.fnmatchcase(name, head):
                    self._match(_join(rel, name), rest, found)
        elif head == "..":
            return
        elif rest:
            self._match(_join(rel, head), rest, found)
        elif self.exists(_join(rel, head)):
            found.append("/" + _join(rel, head))

    def _entries(self, rel: str, dirs_only: bool) -> list[str]:
        try:
            with self.directory(rel or "/") as fd:
                names = sorted(os.listdir(fd))
                if not dirs_only:
                    return names
                return [
                    n
                    for n in names
                    if stat.S_ISDIR(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)
                ]
        except (FileNotFoundError, NotADirectoryError, BadInput):
            return []

    # --- writing ---

    def _clear(self, fd: int, name: str) -> None:
        """Remove whatever ``name`` is in the folder ``fd``: a folder goes with its contents,
        depth first through fds, never following a symlink or entering another mount."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            return
        child = self._child_dir(fd, name)
        stack = [(fd, name, child, iter(os.listdir(child)))]
        try:
            while stack:
                parent, folder, here, names = stack[-1]
                entry = next(names, None)
                if entry is None:
                    stack.pop()
                    os.close(here)
                    os.rmdir(folder, dir_fd=parent)
                    continue
                try:
                    st = os.stat(entry, dir_fd=here, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    below = self._child_dir(here, entry)
                    stack.append((here, entry, below, iter(os.listdir(below))))
                else:
                    os.unlink(entry, dir_fd=here)
        finally:
            for _parent, _folder, here, _names in stack:
                os.close(here)

    def _empty(self, fd: int) -> None:
        for name in os.listdir(fd):
            self._clear(fd, name)

    def remove(self, path: str) -> None:
        """Remove ``path`` (a folder with everything below it); a missing path is fine."""
        try:
            with self.parent(path) as (fd, name):
                self._clear(fd, name)
        except (FileNotFoundError, NotADirectoryError):
            pass

    remove_tree = remove

    def empty(self, path: str) -> None:
        """Remove everything inside the folder at ``path``, keeping the folder."""
        with self.directory(path) as fd:
            self._empty(fd)

    def mkdir(
        self, path: str, mode: int = 0o755, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Make a folder (an existing non-folder at ``path`` is replaced); set its owner, mode."""
        with self.parent(path) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=fd)
            child = self._child_dir(fd, name)
            try:
                if uid is not None and gid is not None:
                    os.fchown(child, uid, gid)
                os.fchmod(child, mode)
            finally:
                os.close(child)

    def mkdirs(self, path: str, mode: int = 0o755, _links: int = 0) -> None:
        """Make ``path`` and its missing parents (root-owned); existing ones stay as they are.

        A dangling symlink on the way keeps its meaning: its target is made, in the root."""
        names = parts(path)
        for depth in range(1, len(names) + 1):
            prefix = "/".join(names[:depth])
            try:
                os.close(self.open(prefix, PATH | os.O_DIRECTORY))
                continue
            except FileNotFoundError:
                pass
            try:
                target = self.readlink(prefix)
            except (FileNotFoundError, OSError) as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL):
                    raise
                self.mkdir(prefix, mode, 0, 0)
                continue
            if _links >= MAX_LINKS:
                raise BadInput(f"too many symlinks resolving {path} in {self.path}")
            folder = "/".join(names[: depth - 1])
            self.mkdirs(
                target if target.startswith("/") else f"{folder}/{target}", mode, _links + 1
            )
            os.close(self.open(prefix, PATH | os.O_DIRECTORY))

    def write_file(
        self,
        path: str,
        data: bytes | IO[bytes] | int,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        """Replace ``path`` with a regular file holding ``data`` (bytes, a file, or an fd)."""
        with self.parent(path) as (fd, name):
            self._clear(fd, name)
            out = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=fd,
            )
            try:
                if isinstance(data, bytes):
                    _write_all(out, data)
                elif isinstance(data, int):
                    while os.sendfile(out, data, None, CHUNK):
                        pass
                else:
                    _copy_sparse(data, out)
                os.fchown(out, uid, gid)
                os.fchmod(out, mode)  # after chown, which clears setuid bits
            finally:
                os.close(out)

    def link(self, path: str, target: str) -> None:
        """A hard link at ``path`` to ``target`` (both inside the root; neither followed)."""
        with self.parent(target) as (source_fd, source_name), self.parent(path) as (fd, name):
            self._clear(fd, name)
            os.link(source_name, name, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)

    def mknod(self, path: str, mode: int, major: int = 0, minor: int = 0) -> None:
        """A device node or FIFO (``mode`` holds its S_IF* kind), replacing what is there."""
        with self.parent(path) as (fd, name):
            self._clear(fd, name)
            os.mknod(name, mode, os.makedev(major, minor), dir_fd=fd)
        self.chmod(path, stat.S_IMODE(mode))  # mknod's mode went through the umask

    def utime(self, path: str, mtime_ns: int) -> None:
        """Set atime and mtime, of a symlink itself if ``path`` is one."""
        if not parts(path):
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            return
        with self.parent(path) as (fd, name):
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)

    def setxattr(self, path: str, key: str, value: bytes) -> None:
        fd = self._node(path)
        try:
            os.setxattr(_fd_path(fd), key, value)
        finally:
            os.close(fd)

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        with self.parent(path) as (fd, name):
            self._clear(fd, name)
            os.symlink(target, name, dir_fd=fd)
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def _node(self, path: str) -> int:
        fd = self.open(path, PATH, follow=False)
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadInput(f"{path} in {self.path} is a symlink; its owner and mode stay")
        return fd

    def chown(self, path: str, uid: int, gid: int) -> None:
        if not parts(path):
            os.fchown(self.fd, uid, gid)
            return
        with self.parent(path) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        """Change a mode; a symlink is refused, never followed."""
        fd = self._node(path)
        try:
            os.chmod(_fd_path(fd), mode)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_sparse(source: IO[bytes], fd: int) -> None:
    """Copy a stream into a new file; runs of zero chunks become holes."""
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if chunk.count(0) == len(chunk):
            os.lseek(fd, len(chunk), os.SEEK_CUR)
        else:
            _write_all(fd, chunk)
    os.ftruncate(fd, size)


def _ids(root: Root, file: str, name: str) -> int | None:
    try:
        text = root.read_text(file)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def lookup_ids(root: Root | Path, owner: str) -> tuple[int, int]:
    """'user' or 'user:group' -> (uid, gid), from the root's own passwd and group files."""
    if not isinstance(root, Root):
        with Root(root) as opened:
            return lookup_ids(opened, owner)
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else _ids(root, "etc/passwd", user)
    if uid is None:
        raise BadInput(
            f"user '{user}' does not exist in the image's /etc/passwd",
            hint="create it in an earlier step, or use a numeric id",
        )
    group = group or user
    gid = int(group) if group.isdigit() else _ids(root, "etc/group", group)
    if gid is None:
        raise BadInput(f"group '{group}' does not exist in the image's /etc/group")
    return uid, gid
