"""The one way kiln touches a path inside a root: a build root, an imported tree, a layer.

A path inside a root is resolved the way the root itself would resolve it (an absolute
symlink points into the root, ``..`` stops at the root, no symlink or mount point leads
out): kiln.rootresolve does that and reads. :class:`Root` adds the operations on the
tree, each acting on file descriptors the resolver opened, never following the last
component: walking and matching below a folder, removing, making folders and files,
links, nodes, owners and modes, and the root's own user and group ids.

    with Root(build_root) as root:
        root.write_file("/var/run/x", b"...")     # lands at build_root/run/x
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO

from kiln.errors import BadInput
from kiln.rootresolve import DIR as DIR
from kiln.rootresolve import MAX_LINKS, Resolver, fd_path
from kiln.rootresolve import OPENAT2 as OPENAT2
from kiln.rootresolve import PATH as PATH
from kiln.rootresolve import parts as parts

CHUNK = 1 << 20


def _entries(fd: int) -> dict[str, os.stat_result]:
    return {
        name: os.stat(name, dir_fd=fd, follow_symlinks=False) for name in sorted(os.listdir(fd))
    }


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class Root(Resolver):
    """A folder seen as the root of a file system: every path given is inside it."""

    # --- the tree ---

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
            os.setxattr(fd_path(fd), key, value)
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
            os.chmod(fd_path(fd), mode)
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
