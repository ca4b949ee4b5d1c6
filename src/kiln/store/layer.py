"""Layer capture and unpacking.

Capture streams GNU tar's output through sha256 into a blob in one pass: Python only moves
1 MiB chunks, tar does the file system walk at its own speed. Entries are sorted by name,
owners are numeric, atime/ctime are left out and PAX header names carry no PID, so the
same tree always gives the same bytes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.store import whiteout
from kiln.store.layout import CHUNK, MEDIA_LAYER, Descriptor, Layout


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


def unpack(layout: Layout, digest: str, dest: Path) -> None:
    """Unpack a layer blob into ``dest`` in overlay form (whiteouts as 0:0 devices)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc.run(
        [
            "tar",
            "--extract",
            f"--file={layout.blob_path(digest)}",
            f"--directory={dest}",
            "--numeric-owner",
            "--same-permissions",
            "--same-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--delay-directory-restore",
        ]
    )
    whiteout.oci_to_overlay(dest, whiteout.scan_oci(dest))
