"""Layer capture and unpacking.

Capture streams GNU tar's output through sha256 into a blob in one pass: Python only moves
1 MiB chunks, tar does the file system walk at its own speed. Entries are sorted by name,
owners are numeric, atime/ctime are left out and PAX header names carry no PID, so the
same tree always gives the same bytes. Sparse files stay sparse: tar records their holes
(GNU sparse format 0.0, whose header keeps the real name: 1.0 puts tar's PID in it, and
the bytes would differ from one capture to the next).

Unpacking is the same stream the other way: Python reads the blob in 1 MiB chunks, hashes
each and writes it to tar's stdin, so the digest is checked in the one pass that unpacks
it. A blob whose digest or size is wrong leaves nothing behind: the tree is removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import StoreError
from kiln.store import whiteout
from kiln.store.layout import CHUNK, FSCK_HINT, MEDIA_LAYER, Descriptor, Layout

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
    descriptor: Descriptor  # the blob (uncompressed: digest == diff_id)

    @property
    def diff_id(self) -> str:
        return self.descriptor.digest


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
    found = whiteout.scan_overlay(source)
    found.opaque = [
        rel for rel in found.opaque if rel and any((lower / rel).is_dir() for lower in lowers)
    ]
    whiteout.overlay_to_oci(source, found)
    try:
        return _stream(layout, tmp_dir, tar_argv(source, source_date_epoch))
    finally:
        whiteout.oci_to_overlay(source, found)


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
    child = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=proc.environment(),
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        read = child.stdout.read
        while chunk := read(CHUNK):
            writer.write(chunk)
        errors = child.stderr.read().decode(errors="replace")
        code = child.wait()
        if code != 0:
            raise proc.CommandError(argv, code, errors)
    except BaseException:
        child.kill()
        child.wait()
        writer.abort()
        raise
    descriptor = writer.commit(MEDIA_LAYER)
    return CapturedLayer(descriptor)


def extract_argv(dest: Path, source: str = "-") -> list[str]:
    """GNU tar reading a layer (stdin by default) into ``dest``, owners and xattrs kept."""
    return ["tar", "--extract", f"--file={source}", f"--directory={dest}", *EXTRACT_FLAGS]


def unpack(layout: Layout, blob: Descriptor, dest: Path, what: str) -> None:
    """Unpack a layer blob into ``dest`` in overlay form (whiteouts as 0:0 devices).

    The blob is checked against ``blob``'s digest and size as it streams into tar; when
    either is wrong (or tar fails) StoreError names the blob and ``what`` (say
    "web:3 layer 1"), and ``dest`` is removed: nothing unverified stays behind.
    """
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
            names = _extract(source, blob, dest, what)
            if _may_hold_whiteouts(names):  # most layers hold none: skip the walk
                whiteout.oci_to_overlay(dest, whiteout.scan_oci(dest))
        except BaseException:
            remove_tree(dest)
            raise


def _extract(source: io.FileIO, blob: Descriptor, dest: Path, what: str) -> bytes:
    """Feed the blob to tar; return the member names tar printed, one a line."""
    argv = [
        *extract_argv(dest),
        # 1 MiB reads from the pipe, each filled before use: 10 KiB reads (tar's default)
        # cost a third more than reading the blob as a file, 1 MiB ones nothing
        f"--record-size={CHUNK}",
        "--read-full-records",
        "--verbose",  # the names say whether whiteouts came along
    ]
    with (
        tempfile.TemporaryFile(dir=dest.parent) as listing,
        tempfile.TemporaryFile(dir=dest.parent) as output,
    ):
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=listing, stderr=output, env=proc.environment()
        )
        assert child.stdin is not None
        try:
            hexdigest, count = _feed(source, child.stdin.fileno(), blob.size)
            child.stdin.close()
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if count != blob.size or f"sha256:{hexdigest}" != blob.digest:
            if count < blob.size:
                seen = f"it ends after {count} of its {blob.size} bytes"
            elif count > blob.size:
                seen = f"it holds more than its {blob.size} bytes"
            else:
                seen = f"its content hashes to sha256:{hexdigest}"
            raise StoreError(f"{what}: blob {blob.digest} is corrupt: {seen}", hint=FSCK_HINT)
        if code != 0:
            output.seek(0)
            text = proc.tail(output.read().decode(errors="replace"))
            raise StoreError(
                f"{what}: unpacking blob {blob.digest} into {dest} failed (tar exited {code})"
                + (f"\n{text}" if text else ""),
                hint=f"check the space and permissions of {dest.parent}",
            )
        listing.seek(0)
        return listing.read()


def _may_hold_whiteouts(names: bytes) -> bool:
    """True unless no member's base name starts with ``.wh.`` (tar -v lists every member;
    its quoting escapes only unprintable characters and backslashes, never these)."""
    marker = whiteout.WH_PREFIX.encode()
    return names.startswith(marker) or b"/" + marker in names or b"\n" + marker in names


def _feed(source: io.FileIO, pipe: int, limit: int) -> tuple[str, int]:
    """Copy ``source`` into ``pipe`` while hashing it: (hex digest, bytes read).

    Reading stops one chunk past ``limit`` (a blob that grew is wrong anyway). When tar
    stops reading early, the rest is still hashed, so a corrupt blob is reported as one.
    """
    _grow_pipe(pipe)
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    count = 0
    open_pipe = True
    while count <= limit and (n := source.readinto(buffer)):
        chunk = view[:n]
        digest.update(chunk)
        count += n
        while open_pipe and chunk:
            try:
                chunk = chunk[os.write(pipe, chunk) :]
            except BrokenPipeError:
                open_pipe = False  # tar gave up; its exit code says why
    return digest.hexdigest(), count


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
