"""The source archive: the files of a recipe folder a bake read, as one deterministic tar.

A bake keeps it with the image as an OCI referrer (kind ``source``, kiln.store.artefacts),
so ``kiln rebuild --prove`` rebuilds any version from what it was baked from, not from
the checkout as it is now.

:func:`pack` runs GNU tar through kiln.proc, as layers are made: members sorted, owners
numeric 0:0, every mtime 0, POSIX format without atime or ctime, hard links stored as
files. The same files always give the same bytes, so the blob's digest names them.

:func:`unpack` treats the archive as hostile (anyone who can write the store can write
one): every member is checked before anything is written, then written through
kiln.rootpath into an empty folder. Only regular files, folders and symlinks; no absolute
name, no ``..``, no member twice, none below a symlink or a file; a symlink only to a
relative target that stays inside the archive; members and bytes bounded.
"""

from __future__ import annotations

import io
import itertools
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import locks, proc
from kiln.errors import BadInput
from kiln.rootpath import Root

KIND = "source"
MEDIA_TYPE = "application/vnd.kiln.source.v1.tar"
MAX_MEMBERS = 200_000
MAX_BYTES = 1 << 30  # the files it unpacks to, in all
MAX_NAME = 4096

TAR_FLAGS = (
    "--sort=name",
    "--format=posix",
    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
    "--numeric-owner",
    "--owner=0",
    "--group=0",
    "--mtime=@0",
    "--hard-dereference",
    "--no-xattrs",
    "--no-acls",
    "--no-selinux",
)


class BadArchive(BadInput):
    """A source archive that is not one kiln would have written (exit 2)."""


def _outermost(members: Iterable[str], folder: Path) -> list[str]:
    """``members`` sorted, once each, without any that a listed real folder holds."""
    out: list[str] = []
    folders: set[str] = set()
    for name in sorted(set(members)):
        parents = name.split("/")
        if any("/".join(parents[:depth]) in folders for depth in range(1, len(parents))):
            continue
        out.append(name)
        full = folder / name
        if full.is_dir() and not full.is_symlink():
            folders.add(name)
    return out


def pack(folder: Path, members: Iterable[str], tmp: Path) -> bytes:
    """The archive of ``members`` (paths relative to ``folder``, never leaving it)."""
    names = _outermost(members, folder)
    for name in names:
        if name.startswith("/") or ".." in name.split("/"):
            raise BadInput(f"{name} is not a path inside {folder}")
    tmp.mkdir(parents=True, exist_ok=True)
    with locks.scratch_dir(tmp, "source-") as scratch:
        out = Path(scratch) / "source.tar"
        argv = ["tar", "--create", f"--file={out}", f"--directory={folder}", *TAR_FLAGS]
        proc.run([*argv, "--", *(f"./{name}" for name in names)])
        return out.read_bytes()


@dataclass(frozen=True)
class _Member:
    name: str  # normalised: relative, no '.' or '..' parts
    kind: str  # file, folder, link
    mode: int
    target: str = ""
    info: tarfile.TarInfo | None = None


def _name(raw: str, where: str) -> str:
    if "\x00" in raw or len(raw.encode(errors="surrogateescape")) > MAX_NAME:
        raise BadArchive(f"{where}: a member name is not a file name: {raw[:80]!r}")
    if raw.startswith("/"):
        raise BadArchive(f"{where}: member {raw!r} has an absolute path")
    names = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in names:
        raise BadArchive(f"{where}: member {raw!r} leads out of the archive ('..')")
    return "/".join(names)


def _check(info: tarfile.TarInfo, where: str) -> _Member | None:
    name = _name(info.name, where)
    mode = stat.S_IMODE(info.mode) & 0o7777
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and info.sparse is None:
        if not name:
            raise BadArchive(f"{where}: a file member without a name")
        return _Member(name, "file", mode, info=info)
    if info.type == tarfile.DIRTYPE:
        return _Member(name, "folder", mode) if name else None
    if info.type == tarfile.SYMTYPE:
        target = info.linkname
        if not name or not target or "\x00" in target or target.startswith("/"):
            raise BadArchive(
                f"{where}: symlink {info.name!r} -> {target!r} leads out of the archive"
            )
        parts = target.split("/")
        ups = len(parts) - len(list(itertools.dropwhile(lambda part: part == "..", parts)))
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        # '..' only at the start (where every folder it climbs is a real one), and the
        # target inside the archive: then no chain of links leads out either
        if ".." in parts[ups:] or resolved == ".." or resolved.startswith("../"):
            raise BadArchive(
                f"{where}: symlink {info.name!r} -> {target!r} leads out of the archive"
            )
        return _Member(name, "link", mode, target=target)
    kinds = {
        tarfile.LNKTYPE: "a hard link",
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO",
        tarfile.CONTTYPE: "a contiguous file",
    }
    what = "a sparse file" if info.sparse is not None else kinds.get(info.type, "of an odd type")
    raise BadArchive(f"{where}: member {info.name!r} is {what}")


def _members(archive: tarfile.TarFile, where: str) -> list[_Member]:
    out: list[_Member] = []
    seen: dict[str, str] = {}
    below: set[str] = set()  # the folders that hold members so far
    total = 0
    for info in archive:
        if len(out) >= MAX_MEMBERS:
            raise BadArchive(f"{where}: more than {MAX_MEMBERS} members")
        member = _check(info, where)
        if member is None:
            continue
        if member.name in seen:
            raise BadArchive(f"{where}: member {member.name!r} is in it twice")
        if member.kind != "folder" and member.name in below:
            raise BadArchive(
                f"{where}: member {member.name!r} is a {member.kind}, and earlier members "
                "lie below it"
            )
        parts = member.name.split("/")
        below.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        for depth in range(1, len(parts)):
            above = seen.get("/".join(parts[:depth]))
            if above is not None and above != "folder":
                raise BadArchive(
                    f"{where}: member {member.name!r} lies below the {above} "
                    f"{'/'.join(parts[:depth])!r}"
                )
        seen[member.name] = member.kind
        total += info.size if member.kind == "file" else 0
        if total > MAX_BYTES:
            raise BadArchive(f"{where}: it unpacks to more than {MAX_BYTES >> 20} MiB")
        out.append(member)
    return out


def readable(data: bytes) -> bool:
    """Whether :func:`unpack` would take the archive (a bake keeps no archive it would
    refuse: inputs holding a symlink that leads out of the recipe's folder, say)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            _members(archive, "the source archive")
    except (BadArchive, tarfile.TarError, EOFError, ValueError, UnicodeError):
        return False
    return True


def unpack(data: bytes, dest: Path, where: str) -> None:
    """Write the archive's members into ``dest`` (made here, empty), once every member
    has been checked; ``where`` names the archive in messages."""
    hint = "the store was written by something other than kiln: kiln fsck"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            members = _members(archive, where)
            dest.mkdir(mode=0o700, parents=True, exist_ok=False)
            with Root(dest) as root:
                _write(root, archive, members, where)
    except BadArchive as exc:
        raise BadArchive(exc.message, hint=hint) from None
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
        raise BadArchive(f"{where} does not read as a tar archive: {exc}", hint=hint) from None
    os.chmod(dest, 0o755)


def _write(root: Root, archive: tarfile.TarFile, members: Sequence[_Member], where: str) -> None:
    folders: list[_Member] = []
    for member in members:
        parent = posixpath.dirname(member.name)
        if parent:
            root.mkdirs(parent, 0o755)
        if member.kind == "folder":
            root.mkdirs(member.name, 0o755)
            folders.append(member)
        elif member.kind == "link":
            root.symlink(member.name, member.target)
        else:
            assert member.info is not None
            source = archive.extractfile(member.info)
            if source is None:
                raise BadArchive(f"{where}: member {member.name!r} has no content")
            root.write_file(member.name, source.read(), member.mode)
    for member in reversed(folders):  # once what they hold is in
        root.chmod(member.name, member.mode)
