"""Apply a vendor's layer tars onto a flat root, honouring OCI whiteouts (imports).

A vendor archive is hostile input: a lower layer may hold ``lnk -> /some/host/dir`` and
an upper one ``lnk/.wh.secret``, ``lnk/.wh..wh..opq`` or ``lnk/file``. Every entry is
therefore applied through kiln.rootpath, one by one: its folder is resolved inside the
root (the symlink leads to the image's /some/host/dir, never the host's) and the entry
itself is made with ``dir_fd=`` and without following its last component. Whiteouts of
a layer apply to the layers below it only, so they are applied in a first pass.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from kiln import proc
from kiln.errors import BadInput
from kiln.layers import OPAQUE, WHITEOUT, oci_marker
from kiln.rootpath import Root

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XATTR = "SCHILY.xattr."


def apply_tar(tarball: Path, dest: Path) -> None:
    """Apply a layer tar (plain, gzip, bzip2, xz or zstd) onto a flat root."""
    dest.mkdir(parents=True, exist_ok=True)
    with Root(dest) as root:
        with _members(tarball) as members:
            for member in members:
                _whiteout(root, tarball, member)
        folders: list[tuple[str, int]] = []
        with _members(tarball) as members:
            for member in members:
                _extract(root, tarball, member, members, folders)
        for path, mtime in reversed(folders):  # after their contents changed them
            root.utime(path, mtime)


@contextmanager
def _members(tarball: Path) -> Iterator[tarfile.TarFile]:
    with tarball.open("rb") as raw:
        zstd = raw.read(4) == ZSTD_MAGIC
    if not zstd:
        with tarball.open("rb") as stream, _archive(tarball, stream) as archive:
            yield archive
        return
    unzstd = ["zstd", "-dc", "--", str(tarball)]
    with proc.reading(unzstd, check=False) as child, _archive(tarball, child.stdout) as archive:
        yield archive
    if child.returncode != 0:  # a tar that ends early in a broken stream is no whole layer
        said = proc.tail(child.errors, 5)
        raise BadInput(
            f"{tarball} does not decompress: zstd exited {child.returncode}"
            + (f"\n{said}" if said else ""),
            hint=f"zstd -t {tarball} tests it; fetch or export the archive again",
        )


@contextmanager
def _archive(tarball: Path, stream: IO[bytes]) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            yield archive
    except tarfile.TarError as exc:
        raise BadInput(f"{tarball} is not a readable tar archive: {exc}") from None


def _path(tarball: Path, member: tarfile.TarInfo) -> str:
    clean = os.path.normpath("/" + member.name).lstrip("/")
    if ".." in member.name.split("/"):
        raise BadInput(f"{tarball}: refusing entry outside the root: {member.name}")
    return "/" + clean if clean != "." else "/"


def _whiteout(root: Root, tarball: Path, member: tarfile.TarInfo) -> None:
    path = _path(tarball, member)
    folder, base = path.rsplit("/", 1)
    marker = oci_marker(base)
    if marker is not None and marker[0] == OPAQUE:
        with suppress(FileNotFoundError, NotADirectoryError):  # nothing below to hide
            root.empty(folder or "/")
    elif marker is not None and marker[0] == WHITEOUT:
        root.remove(f"{folder}/{marker[1]}")


def _extract(
    root: Root,
    tarball: Path,
    member: tarfile.TarInfo,
    archive: tarfile.TarFile,
    folders: list[tuple[str, int]],
) -> None:
    path = _path(tarball, member)
    if oci_marker(path.rsplit("/", 1)[1]) is not None:
        return
    mode = member.mode & 0o7777
    mtime = int(member.mtime * 1_000_000_000)
    if path == "/":
        if member.isdir():
            root.chown("/", member.uid, member.gid)
            root.chmod("/", mode)
            folders.append(("/", mtime))
        return
    root.mkdirs(path.rsplit("/", 1)[0] or "/")
    if member.isdir():
        root.mkdir(path, mode, member.uid, member.gid)
        folders.append((path, mtime))
    elif member.isreg():
        data = archive.extractfile(member)
        assert data is not None
        root.write_file(path, data, mode, member.uid, member.gid)
    elif member.issym():
        root.symlink(path, member.linkname, member.uid, member.gid)
    elif member.islnk():
        root.link(path, "/" + os.path.normpath("/" + member.linkname).lstrip("/"))
    elif member.ischr() or member.isblk() or member.isfifo():
        root.mknod(path, member.mode & 0o7777 | _kind(member), member.devmajor, member.devminor)
        root.chown(path, member.uid, member.gid)
    else:
        return  # tarfile has parsed pax and GNU headers already: nothing else to make
    for key, value in member.pax_headers.items():
        if key.startswith(XATTR + "security."):
            root.setxattr(path, key[len(XATTR) :], value.encode("utf-8", "surrogateescape"))
    if not member.isdir():
        root.utime(path, mtime)


def _kind(member: tarfile.TarInfo) -> int:
    if member.ischr():
        return stat.S_IFCHR
    if member.isblk():
        return stat.S_IFBLK
    return stat.S_IFIFO
