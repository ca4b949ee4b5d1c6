"""The unpacked-layer cache: each layer unpacked once under ``layers/<diff-id hex>``.

A layer folder exists only complete: it is unpacked into a scratch folder under ``tmp/``
(held by its flock, so gc can tell a live unpack from a dead one's leftovers), checked
against the blob's digest and (for a compressed blob) the diff_id of what it decompresses
to as it streams, and renamed into place only then. The rename
is the completeness marker. Two processes that unpack the same layer at once both finish;
the one that loses the rename discards its copy and uses the winner's.

Every use checks the blob is there with its descriptor's size (a stat, so ``kiln run``
stays quick): a store whose blob went missing or was cut short is refused even when the
unpacked copy is still on disk, since nothing could rebuild or verify that copy. A full
digest check of every blob is ``kiln fsck``'s work.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from kiln import locks
from kiln.errors import StoreError
from kiln.home import Home
from kiln.store import layer
from kiln.store.layout import FSCK_HINT, MEDIA_LAYER, Descriptor, Layout

DIFF_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def path_of(home: Home, diff_id: str) -> Path:
    """Where the layer with this diff_id lives unpacked (checked: a diff_id names a folder)."""
    if not DIFF_ID_RE.match(diff_id):
        raise StoreError(f"{diff_id!r} is not a layer diff_id", hint=FSCK_HINT)
    return home.layers / diff_id.split(":", 1)[1]


def check_blob(layout: Layout, blob: Descriptor, what: str) -> None:
    """The blob is a file of the descriptor's size (a stat, not a digest check)."""
    path = layout.blob_path(blob.digest)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StoreError(
            f"{what}: blob {blob.digest} is missing from {layout.blobs}", hint=FSCK_HINT
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what}: blob {blob.digest} is not a file", hint=FSCK_HINT)
    if st.st_size != blob.size:
        raise StoreError(
            f"{what}: blob {blob.digest} is {st.st_size} bytes, its descriptor says {blob.size}",
            hint=FSCK_HINT,
        )


def ensure(home: Home, layout: Layout, blob: Descriptor, diff_id: str, what: str) -> Path:
    """The layer's folder under ``layers/``, unpacked and verified first if it is missing.

    ``what`` names the layer in errors ("web:3 layer 1"). Fails with StoreError (exit 1)
    when the blob is missing, has the wrong size or digest, or is not a layer kiln can
    unpack.
    """
    target = path_of(home, diff_id)
    check_blob(layout, blob, what)
    if blob.media_type not in layer.MEDIA_TYPES or (
        blob.media_type == MEDIA_LAYER and blob.digest != diff_id
    ):
        raise StoreError(
            f"{what}: blob {blob.digest} ({blob.media_type}) is not a tar layer (plain or "
            f"gzip) with diff_id {diff_id}",
            hint=FSCK_HINT,
        )
    if _is_dir(target, what):
        return target
    scratch, held = locks.owned_dir(home.tmp, "unpack-")
    try:
        tree = scratch / "layer"
        layer.unpack(layout, blob, tree, what, diff_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tree, target)  # only a verified tree gets here
        except OSError as exc:
            # another process put the same layer in place first: its copy is as good
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_dir(target, what):
                raise StoreError(
                    f"{what}: could not move the unpacked layer to {target}: {exc.strerror}",
                    hint=f"check {home.layers}",
                ) from None
    finally:
        try:
            layer.remove_tree(scratch)
        finally:
            held.release()
    return target


def _is_dir(target: Path, what: str) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"{what}: {target} is not a folder",
            hint=f"remove it (kiln unpacks the layer again on next use), then {FSCK_HINT}",
        )
    return True
