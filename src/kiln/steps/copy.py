"""`copy`: files or a folder's contents from beside the recipe into the root.

Destination paths resolve inside the root (kiln.rootpath): a symlink in the image keeps
its meaning there and can never lead a copy out onto the host. Sources are read through
file descriptors, never following a symlink: regular files, folders and symlinks are
copied, anything else (a FIFO, a device, a socket) is refused. Owners default to
root:root, whatever owns the files in the checkout.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from pydantic import Field, field_validator

from kiln.errors import BadInput
from kiln.rootpath import Root, lookup_ids
from kiln.schema import OWNER_RE, api_filesystem, path_bounds
from kiln.steps.kind import Input, Kind, StepModel
from kiln.steps.target import Target

VERSION = 1
INPUTS = (Input("copy", "copy", "tree"),)


class CopyStep(StepModel):
    """Copy a file or a folder's contents from beside the recipe into the root."""

    source: str = Field(alias="copy", min_length=1)
    to: str
    mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3,4}$")
    owner: str | None = Field(default=None, pattern=OWNER_RE, max_length=65)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        path_bounds(value)
        return value

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        path_bounds(value)
        if not value.startswith("/"):
            raise ValueError("must be an absolute path inside the image, e.g. /etc/motd")
        if ".." in value.split("/"):
            raise ValueError("must not contain '..': targets stay inside the root")
        api = api_filesystem(value)
        if api is not None:
            raise ValueError(
                f"{value!r} is under {api}, which the kernel, systemd or kiln mounts over "
                "in a build and in a machine: what a copy puts there is hidden; copy it "
                "elsewhere, e.g. /etc or /usr/local"
            )
        return value

    @property
    def target(self) -> str:
        """The normalised target; a trailing slash means 'into this folder'."""
        norm = posixpath.normpath(self.to)
        return norm + "/" if self.to.endswith("/") and norm != "/" else norm


def apply(target: Target, step: CopyStep, index: int) -> None:
    source = INPUTS[0].locate(target.folder, step.source)
    with Root(target.root) as root:
        copy(root, source, step.target, step.owner, step.mode)


def copy(root: Root, source: Path, target: str, owner: str | None, mode_text: str | None) -> None:
    """Copy ``source`` (a file or a folder's contents) to ``target`` inside ``root``."""
    uid, gid = lookup_ids(root, owner) if owner else (0, 0)
    mode = int(mode_text, 8) if mode_text else None
    top = _open_source(source)
    try:
        kind = stat.S_IFMT(os.fstat(top).st_mode)
        if kind == stat.S_IFDIR:
            base = target.rstrip("/") or "/"
            root.mkdirs(base)
            _copy_tree(root, source, base, uid, gid, mode)
            return
        if target.endswith("/"):
            target = target + source.name
        root.mkdirs(target.rsplit("/", 1)[0] or "/")
        _put_file(root, target, source, top, uid, gid, mode)
    finally:
        os.close(top)


def _open_source(path: Path, dir_fd: int | None = None) -> int:
    """An fd of a source entry, never following a symlink; only files and folders pass."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise BadInput(f"copy source {path} does not exist") from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        os.close(fd)
        what = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(kind, "a device")
        raise BadInput(
            f"copy source {path} is {what}",
            hint="copy copies regular files, folders and symlinks only",
        )
    return fd


def _copy_tree(root: Root, source: Path, base: str, uid: int, gid: int, mode: int | None) -> None:
    with Root(source) as tree:
        for rel_dir, dir_fd, entries in tree.walk():
            here = f"{base.rstrip('/')}/{rel_dir}" if rel_dir else base.rstrip("/")
            for name, st in entries.items():
                dest = f"{here}/{name}"
                if stat.S_ISDIR(st.st_mode):
                    root.mkdir(dest, stat.S_IMODE(st.st_mode), uid, gid)
                elif stat.S_ISLNK(st.st_mode):
                    root.symlink(dest, os.readlink(name, dir_fd=dir_fd), uid, gid)
                else:
                    fd = _open_source(Path(name), dir_fd=dir_fd)
                    try:
                        _put_file(root, dest, source / rel_dir / name, fd, uid, gid, mode)
                    finally:
                        os.close(fd)


def _put_file(
    root: Root, dest: str, source: Path, fd: int, uid: int, gid: int, mode: int | None
) -> None:
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        root.symlink(dest, os.readlink("", dir_fd=fd), uid, gid)
        return
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"copy source {source} is not a regular file")
    data = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        root.write_file(
            dest, data, mode if mode is not None else stat.S_IMODE(st.st_mode), uid, gid
        )
    finally:
        os.close(data)


KIND = Kind("copy", CopyStep, VERSION, apply, INPUTS)
