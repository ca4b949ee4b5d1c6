"""Layer capture and unpacking.

Capture streams GNU tar's output, in one pass, through sha256 (the diff_id), gzip and
sha256 again (the blob digest) into a blob: Python only moves 1 MiB chunks, tar does the
file system walk at its own speed, ISA-L deflates (in C, outside the GIL). Entries are
sorted by name, owners are numeric, atime/ctime are left out and PAX header names carry
no PID, so the same tree always gives the same tar bytes; the compressor is pinned (the
exact ``isal`` version in the dependencies, which carries its own ISA-L, a fixed level,
one stream, a gzip header with no name and no time) so the same tar bytes always give the
same blob. Sparse files stay sparse: tar records their
holes (GNU sparse format 0.0, whose header keeps the real name: 1.0 puts tar's PID in it).

Layers are stored compressed because an image's identity is its manifest digest: a
registry keeps compressed layers as they are, so ``skopeo copy`` to one and back keeps
the digest. Uncompressed layers (stores written by earlier kilns) keep working as they are.

Unpacking is the same stream the other way: Python reads the blob in 1 MiB chunks, hashes
each, decompresses it, hashes the tar bytes against the diff_id and writes them to tar's
stdin, so both digests are checked in the one pass that unpacks it. A blob whose digest,
size or diff_id is wrong leaves nothing behind: the tree is removed.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import io
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from isal import igzip, igzip_lib, isal_zlib

from kiln import layers, proc
from kiln.errors import KilnError, StoreError
from kiln.rootpath import Root
from kiln.store.layout import (
    CHUNK,
    FSCK_HINT,
    MEDIA_LAYER,
    MEDIA_LAYER_GZIP,
    Descriptor,
    Layout,
)

# The pinned compressor: gzip, since every OCI tool reads it (Debian 12's umoci cannot
# unpack zstd layers). ISA-L level 2 gives zlib's gzip -1 ratio at several times its
# speed; `sudo .venv/bin/python -m bench.bake` prints capture MB/s and the stored ratio.
GZIP_LEVEL = 2
GZIP_WBITS = 31  # a gzip stream: its header has mtime 0, no name, OS 255
MEDIA_TYPES = (MEDIA_LAYER, MEDIA_LAYER_GZIP)
# a class at run time; isal's stub calls it an instance
BAD_DEFLATE = cast(type[Exception], igzip_lib.IsalError)

EXTRACT_FLAGS = (
    "--numeric-owner",
    "--same-permissions",
    "--same-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--delay-directory-restore",
)


@dataclass(frozen=True)
class CapturedLayer:
    descriptor: Descriptor  # the compressed blob, as the manifest lists it
    diff_id: str  # sha256 of the tar stream, as the config lists it


def compressor() -> isal_zlib.Compress:
    """kiln's one layer compressor (a gzip stream at a fixed level)."""
    return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)


def tar_argv(source: Path, source_date_epoch: int | None = None) -> list[str]:
    argv = [
        "tar",
        "--create",
        "--file=-",
        f"--directory={source}",
        "--sort=name",
        "--numeric-owner",
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--xattrs",
        "--xattrs-include=security.capability",
        "--sparse",
        "--sparse-version=0.0",
    ]
    if source_date_epoch is not None:
        argv += [f"--mtime=@{source_date_epoch}", "--clamp-mtime"]
    return [*argv, "."]


def capture(
    layout: Layout,
    tmp_dir: Path,
    source: Path,
    lowers: Sequence[Path] = (),
    source_date_epoch: int | None = None,
) -> CapturedLayer:
    """Tar ``source`` (an overlay upper dir or a whole root) into a layer blob.

    ``lowers`` are the parent's unpacked layers: an opaque marker only matters where a
    lower layer has that folder, so markers on brand-new folders are left out.
    """
    if source_date_epoch is not None:
        clamp_mtimes(source, source_date_epoch)
    if not lowers:  # nothing below a base layer: no deletion or opaque marker can matter
        return _stream(layout, tmp_dir, tar_argv(source, source_date_epoch))
    found = layers.scan_overlay(source)
    found.opaque = [rel for rel in found.opaque if rel and _a_lower_has_folder(lowers, rel)]
    layers.overlay_to_oci(source, found)
    try:
        return _stream(layout, tmp_dir, tar_argv(source, source_date_epoch))
    finally:
        layers.oci_to_overlay(source, found)


def _a_lower_has_folder(lowers: Sequence[Path], rel: str) -> bool:
    """Whether a lower layer has a folder at ``rel``, each asked inside itself (a symlink
    a layer holds is followed within that layer, never to the host's files)."""
    for lower in lowers:
        with Root(lower) as root:
            try:
                if stat.S_ISDIR(root.stat(rel).st_mode):
                    return True
            except (OSError, KilnError):  # missing, a loop, a link out of the layer
                continue
    return False


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Clamp mtimes newer than ``epoch`` on disk, as tar's --clamp-mtime does in the blob.

    The unpacked layer then matches its blob exactly, so what overlayfs copies up from it
    into a child's layer (a folder's mtime, say) is the same in every store.
    """
    limit = epoch * 1_000_000_000
    base = str(tree)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if st.st_mtime_ns > limit:
                os.utime(full, ns=(st.st_atime_ns, limit), follow_symlinks=False)
    st = os.lstat(base)
    if st.st_mtime_ns > limit:
        os.utime(base, ns=(st.st_atime_ns, limit), follow_symlinks=False)


def _stream(layout: Layout, tmp_dir: Path, argv: list[str]) -> CapturedLayer:
    writer = layout.writer(tmp_dir)
    diff = hashlib.sha256()
    compress = compressor()
    try:
        with proc.reading(argv) as tar:  # its stderr drained apart: warnings never block it
            read = tar.stdout.read  # buffered: whole 1 MiB chunks until the end, and the
            # compressor's output depends on how its input is cut, so the cut must not vary
            while chunk := read(CHUNK):
                diff.update(chunk)
                if out := compress.compress(chunk):
                    writer.write(out)
            writer.write(compress.flush())
    except BaseException:
        writer.abort()
        raise
    descriptor = writer.commit(MEDIA_LAYER_GZIP)
    return CapturedLayer(descriptor, f"sha256:{diff.hexdigest()}")


def extract_argv(dest: Path, source: str = "-") -> list[str]:
    """GNU tar reading a layer (stdin by default) into ``dest``, owners and xattrs kept."""
    return ["tar", "--extract", f"--file={source}", f"--directory={dest}", *EXTRACT_FLAGS]


def unpack(
    layout: Layout, blob: Descriptor, dest: Path, what: str, diff_id: str | None = None
) -> None:
    """Unpack a layer blob into ``dest`` in overlay form (whiteouts as 0:0 devices).

    The blob is checked against ``blob``'s digest and size as it streams into tar, and the
    tar stream it decompresses to against ``diff_id`` (when given); when any is wrong (or
    tar fails) StoreError names the blob and ``what`` (say "web:3 layer 1"), and ``dest``
    is removed: nothing unverified stays behind.
    """
    if blob.media_type not in MEDIA_TYPES:
        raise StoreError(
            f"{what}: blob {blob.digest} has media type {blob.media_type}, not a tar layer "
            "kiln can unpack (plain or gzip)",
            hint=FSCK_HINT,
        )
    path = layout.blob_path(blob.digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise StoreError(
            f"{what}: blob {blob.digest} is missing from {layout.blobs}", hint=FSCK_HINT
        ) from None
    with os.fdopen(fd, "rb", buffering=0) as source:
        size = os.fstat(source.fileno()).st_size
        if size != blob.size:
            raise StoreError(
                f"{what}: blob {blob.digest} is {size} bytes, its descriptor says {blob.size}",
                hint=FSCK_HINT,
            )
        dest.mkdir(parents=True, exist_ok=True)
        try:
            names = _extract(source, blob, diff_id, dest, what)
            if _may_hold_whiteouts(names):  # most layers hold none: skip the walk
                layers.oci_to_overlay(dest, layers.scan_oci(dest))
        except BaseException:
            remove_tree(dest)
            raise


def _extract(
    source: io.FileIO, blob: Descriptor, diff_id: str | None, dest: Path, what: str
) -> bytes:
    """Feed the blob to tar; return the member names tar printed, one a line."""
    argv = [
        *extract_argv(dest),
        # 1 MiB reads from the pipe, each filled before use: 10 KiB reads (tar's default)
        # cost a third more than reading the blob as a file, 1 MiB ones nothing
        f"--record-size={CHUNK}",
        "--read-full-records",
        "--verbose",  # the names say whether whiteouts came along
    ]
    with tempfile.TemporaryFile(dir=dest.parent) as listing:
        with proc.feeding(argv, stdout=listing, check=False) as tar:
            fed = _feed(source, tar.stdin.fileno(), blob)
        check_stream(fed, blob, diff_id, what)
        if tar.returncode != 0:
            text = proc.tail(tar.errors)
            raise StoreError(
                f"{what}: unpacking blob {blob.digest} into {dest} failed "
                f"(tar exited {tar.returncode})" + (f"\n{text}" if text else ""),
                hint=f"check the space and permissions of {dest.parent}",
            )
        listing.seek(0)
        return listing.read()


def _may_hold_whiteouts(names: bytes) -> bool:
    """True unless no member's base name starts with ``.wh.`` (tar -v lists every member;
    its quoting escapes only unprintable characters and backslashes, never these)."""
    marker = layers.WH_PREFIX.encode()
    return names.startswith(marker) or b"/" + marker in names or b"\n" + marker in names


@dataclass(frozen=True)
class Streamed:
    """What reading a layer blob found: its digest and size, and its tar stream's diff_id
    (None when the blob did not decompress: ``error`` says why)."""

    digest: str
    size: int
    diff_id: str | None
    error: str = ""


def check_stream(fed: Streamed, blob: Descriptor, diff_id: str | None, what: str) -> None:
    """Raise StoreError when what was read is not what ``blob`` and ``diff_id`` promise."""
    if fed.size != blob.size or fed.digest != blob.digest:
        if fed.size < blob.size:
            seen = f"it ends after {fed.size} of its {blob.size} bytes"
        elif fed.size > blob.size:
            seen = f"it holds more than its {blob.size} bytes"
        else:
            seen = f"its content hashes to {fed.digest}"
        raise StoreError(f"{what}: blob {blob.digest} is corrupt: {seen}", hint=FSCK_HINT)
    if fed.error:
        raise StoreError(
            f"{what}: blob {blob.digest} ({blob.media_type}) does not decompress: {fed.error}",
            hint=FSCK_HINT,
        )
    if diff_id is not None and fed.diff_id != diff_id:
        raise StoreError(
            f"{what}: blob {blob.digest} unpacks to a tar stream hashing to {fed.diff_id}, "
            f"but the image config says its diff_id is {diff_id}",
            hint=FSCK_HINT,
        )


class _Counted:
    """The blob as a file object that hashes and counts what is read from it.

    Reading stops one chunk past ``limit`` (a blob that grew is wrong anyway).
    """

    def __init__(self, source: io.FileIO, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if self.count > self._limit:
            return b""
        data = self._source.read(CHUNK if size < 0 else min(size, CHUNK)) or b""
        self.digest.update(data)
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _tar_reader(media_type: str, blob: _Counted) -> Callable[[], bytes]:
    """A function returning the next piece (at most 1 MiB) of the tar stream, b"" at the end."""
    if media_type == MEDIA_LAYER_GZIP:  # several gzip members, as pigz writes, read too
        unzipped: gzip.GzipFile = igzip.IGzipFile(  # type: ignore[no-untyped-call]
            fileobj=cast(BinaryIO, blob), mode="rb"
        )
        return lambda: unzipped.read(CHUNK)
    return lambda: blob.read(CHUNK)


def read_stream(source: io.FileIO, blob: Descriptor, sink: Callable[[bytes], None]) -> Streamed:
    """Read a layer blob once: hash it, decompress it, hash the tar bytes, hand them to sink.

    The whole blob is hashed even when decompressing fails half way, so a corrupt blob is
    reported as one.
    """
    counted = _Counted(source, blob.size)
    read = _tar_reader(blob.media_type, counted)
    plain = blob.media_type == MEDIA_LAYER
    diff = hashlib.sha256()
    error = ""
    try:
        while chunk := read():
            if not plain:
                diff.update(chunk)
            sink(chunk)
    except (BAD_DEFLATE, zlib.error, OSError, EOFError) as exc:
        error = str(exc) or type(exc).__name__
    counted.drain()
    digest = f"sha256:{counted.digest.hexdigest()}"
    diff_id = digest if plain else f"sha256:{diff.hexdigest()}"
    return Streamed(digest, counted.count, None if error else diff_id, error)


def _feed(source: io.FileIO, pipe: int, blob: Descriptor) -> Streamed:
    """Stream ``source`` into ``pipe`` as tar bytes while hashing both sides.

    When tar stops reading early, the rest is still hashed (its exit code says why).
    """
    _grow_pipe(pipe)
    open_pipe = True

    def write(chunk: bytes) -> None:
        nonlocal open_pipe
        view = memoryview(chunk)
        while open_pipe and view:
            try:
                view = view[os.write(pipe, view) :]
            except BrokenPipeError:
                open_pipe = False  # tar gave up; its exit code says why

    return read_stream(source, blob, write)


def _grow_pipe(pipe: int) -> None:
    """A 1 MiB pipe (the default maximum) lets tar drain a whole chunk while the next is hashed."""
    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, CHUNK)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EBUSY):
            raise


def remove_tree(tree: Path) -> None:
    """Remove a tree kiln made (an unpack that failed, a scratch folder); no mounts cross."""
    if os.path.lexists(tree):
        proc.run(["rm", "-rf", "--one-file-system", "--", str(tree)])
