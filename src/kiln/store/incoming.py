"""Blobs skopeo copies into a scratch layout, hashed while they arrive.

The scratch layout is seeded with hard links to the blobs the store already has, so
skopeo skips them. skopeo writes each new blob into a temp file (``oci-put-blob*`` in the
layout's folder) and renames it into ``blobs/sha256/<hex>`` once it is whole; a watcher
opens each temp file as it appears and hashes it as it grows, so a blob's hash is ready
when its copy is (the rename keeps the inode, which ties the two names). A blob that
landed between two looks is hashed from its final name. Nothing enters the store before
it hashes to its name; a follower's hash that does not match is checked again from the
file, so only the blob's own bytes decide.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from kiln import locks
from kiln.digests import file_sha256
from kiln.errors import KilnError
from kiln.store.layout import Descriptor, Layout

WATCH_SECONDS = 0.01
TEMP_PREFIX = "oci-put-blob"  # containers/image's oci: destination
CHUNK = 1 << 20
FOLLOWERS = 8  # skopeo copies a few blobs at once


class Incoming:
    """A scratch layout skopeo copies into; see the module's text."""

    def __init__(self, layout: Layout, folder: Path, blobs: list[Descriptor]) -> None:
        self.layout = layout
        self.folder = folder
        self.shared = folder / "blobs" / "sha256"
        self.shared.mkdir(parents=True)
        self._seeded: set[str] = set()
        for blob in blobs:
            if layout.has_blob(blob.digest):
                os.link(layout.blob_path(blob.digest), self.shared / blob.hex)
                self._seeded.add(blob.hex)
        self._followed: dict[str, tuple[int, Future[str | None]]] = {}  # temp name -> ino
        self._hashed: dict[str, Future[str]] = {}  # final name -> its hash
        self._pool = ThreadPoolExecutor(max_workers=FOLLOWERS)
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._watching, daemon=True)

    def __enter__(self) -> Incoming:
        self._watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _stop(self) -> None:
        self._done.set()
        if self._watch.is_alive():
            self._watch.join()

    def _watching(self) -> None:
        while not self._done.wait(WATCH_SECONDS):
            self._scan()

    def _scan(self) -> None:
        for name in os.listdir(self.folder):
            if name.startswith(TEMP_PREFIX) and name not in self._followed:
                path = self.folder / name
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # renamed already: hashed by its final name below
                inode = os.fstat(fd).st_ino
                self._followed[name] = (inode, self._pool.submit(self._follow, fd, path))

    def _follow(self, fd: int, path: Path) -> str | None:
        """The sha256 of the temp file at ``path`` once skopeo has renamed it; None when
        it went away unrenamed (a failed copy) or the copy ended without it."""
        digest = hashlib.sha256()
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if chunk:
                    digest.update(chunk)
                    continue
                if not os.path.lexists(path):  # renamed (or removed): read what is left
                    while chunk := os.read(fd, CHUNK):
                        digest.update(chunk)
                    return digest.hexdigest()
                if self._done.is_set():
                    return None
                time.sleep(WATCH_SECONDS / 2)
        finally:
            os.close(fd)

    def _hash_of(self, name: str) -> str:
        """The hash of blob ``name``: its follower's, else read from the file."""
        path = self.shared / name
        inode = os.stat(path, follow_symlinks=False).st_ino
        for followed_inode, future in self._followed.values():
            if followed_inode == inode:
                found = future.result()
                if found is not None:
                    return found
        return file_sha256(path)

    def take(self, descriptors: list[Descriptor]) -> None:
        """Link every blob named (once it hashes to its name) into the store; call it
        after skopeo has finished."""
        self._stop()  # the watcher is done; followers see their renames, then end
        for name in os.listdir(self.shared):
            if len(name) == 64 and name not in self._seeded:
                self._hashed.setdefault(name, self._pool.submit(self._hash_of, name))
        for descriptor in descriptors:
            name = descriptor.hex
            if name in self._seeded:
                continue
            future = self._hashed.get(name)
            if future is None:
                raise KilnError(f"skopeo left no blob {descriptor.digest}: the copy is incomplete")
            actual = "sha256:" + future.result()
            if actual != descriptor.digest:  # a follower may have raced a rewrite: read again
                actual = "sha256:" + file_sha256(self.shared / name)
            if actual != descriptor.digest:
                raise KilnError(
                    f"the blob {descriptor.digest} that arrived hashes to {actual}: refused"
                )
            _link(self.layout, self.shared / name, descriptor.digest)


def _link(layout: Layout, path: Path, digest: str) -> None:
    if layout.has_blob(digest):
        return  # stored meanwhile (by another pull or a bake): that copy stays
    os.chmod(path, 0o644)
    with suppress(FileExistsError):
        os.link(path, layout.blob_path(digest))


@contextmanager
def incoming(layout: Layout, blobs: list[Descriptor]) -> Iterator[Incoming]:
    """An :class:`Incoming` in a scratch folder under the store's ``tmp/``."""
    with (
        locks.scratch_dir(layout.tmp, "pull-") as folder,
        Incoming(layout, Path(folder), blobs) as taking,
    ):
        yield taking
