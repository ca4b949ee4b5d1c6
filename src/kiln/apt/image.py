"""The apt sources an image holds, read from its unpacked layers as overlayfs would merge
them: ``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` and ``*.sources``.

Layers are read top first, each through kiln.rootpath.Root: a whiteout (a character
device 0:0) hides a path below it, an opaque folder (``trusted.overlay.opaque=y``) hides
the folder's lower contents. A symlink is followed inside the image, never on the host:
its target is looked up in the merged layers again (at most :data:`MAX_LINKS` times).
Each file is read to at most :data:`MAX_FILE` bytes, and at most :data:`MAX_FILES` files.
Only http and https repositories are kept: a ``file:`` or ``copy:`` line would have
kiln's apt read the host's files.

A ``signed-by`` keyring the image names is the image's file, not the host's: it is
copied out (bounded, by content) to ``keyrings/<sha256>`` beside the index cache and the
line names that copy, so the private apt checks the suite with the key the image's own
apt would use. A deb822 ``Signed-By`` key block is kept there the same way. A line whose
keyring the image does not hold (or whose key block is not one) is left out, as the
image's own apt could not check it either, and said so: :class:`Dropped`.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kiln.apt.sources import Source, keep_inline_key, keep_keyring, parse
from kiln.errors import BadInput, KilnError
from kiln.rootpath import PATH, Root

MAX_FILE = 1 << 20
MAX_FILES = 256
MAX_LINKS = 16
MAX_KEYRING = 1 << 20
OPAQUE_XATTR = "trusted.overlay.opaque"
SOURCES_LIST = "etc/apt/sources.list"
SOURCES_PARTS = "etc/apt/sources.list.d"
SCHEMES = ("http://", "https://")


class Layers:
    """An image's unpacked layers (bottom first), read merged."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)

    def _lstat(self, root: Root, rel: str) -> os.stat_result | None:
        try:
            fd = root.open(rel, PATH, follow=False)
        except (FileNotFoundError, NotADirectoryError, BadInput, KilnError):
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _opaque(root: Root, rel: str) -> bool:
        try:
            with root.directory(rel) as fd:
                return os.getxattr(fd, OPAQUE_XATTR) == b"y"
        except (OSError, BadInput, KilnError):
            return False

    def _find(self, rel: str) -> tuple[Path, os.stat_result] | None:
        """The layer whose entry at ``rel`` is visible, and that entry (not followed)."""
        names = [p for p in rel.split("/") if p]
        for layer in reversed(self.dirs):
            with Root(layer) as root:
                hidden = False
                for depth in range(1, len(names)):
                    st = self._lstat(root, "/".join(names[:depth]))
                    if st is None:
                        break
                    if not stat.S_ISDIR(st.st_mode):
                        return None  # a whiteout or a file over a folder hides the rest
                    if self._opaque(root, "/".join(names[:depth])):
                        hidden = True
                else:
                    st = self._lstat(root, rel)
                    if st is not None:
                        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                            return None
                        return layer, st
                if hidden:
                    return None
        return None

    def resolve(self, rel: str) -> tuple[Path, str, os.stat_result] | None:
        """Follow symlinks inside the image: (layer, path, entry) of what ``rel`` names."""
        rel = rel.strip("/")
        for _ in range(MAX_LINKS):
            found = self._find(rel)
            if found is None:
                return None
            layer, st = found
            if not stat.S_ISLNK(st.st_mode):
                return layer, rel, st
            with Root(layer) as root:
                target = root.readlink(rel)
            base = "/" if target.startswith("/") else "/" + posixpath.dirname(rel)
            rel = posixpath.normpath(posixpath.join(base, target)).lstrip("/")
        raise BadInput(f"too many symlinks resolving /{rel} in the image")

    def read(self, rel: str, limit: int = MAX_FILE) -> bytes | None:
        """A regular file's bytes, or None when the image has none at ``rel``."""
        found = self.resolve(rel)
        if found is None or not stat.S_ISREG(found[2].st_mode):
            return None
        layer, path, _st = found
        with Root(layer) as root:
            return root.read_bytes(path, limit)

    def listdir(self, rel: str) -> list[str]:
        """The names in a folder of the merged image, whiteouts applied."""
        names: set[str] = set()
        hidden: set[str] = set()
        found = self.resolve(rel)
        if found is None or not stat.S_ISDIR(found[2].st_mode):
            return []
        rel = found[1]
        for layer in reversed(self.dirs):
            with Root(layer) as root:
                st = self._lstat(root, rel)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break
                try:
                    with root.directory(rel) as fd:
                        for name in os.listdir(fd):
                            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                            if stat.S_ISCHR(entry.st_mode) and entry.st_rdev == 0:
                                hidden.add(name)
                            elif name not in hidden:
                                names.add(name)
                except (OSError, BadInput, KilnError):
                    continue
                if self._opaque(root, rel):
                    break
        return sorted(names)


@dataclass(frozen=True)
class Dropped:
    """A sources line of the image left out: its keyring is not in the image (``keyring``,
    the path it names), or its inline key block is no key (``keyring``: "inline")."""

    file: str  # /etc/apt/sources.list.d/NAME
    keyring: str
    source: str  # the line, without its signed-by

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "keyring": self.keyring, "source": self.source}


class ImageSources(NamedTuple):
    sources: list[Source]
    files: list[str]  # the files read, as the image names them
    dropped: list[Dropped]


def _keyring(layers: Layers, path: str, keyrings: Path) -> str | None:
    """The image's keyring file at ``path``, copied to ``keyrings`` by content."""
    if not path.startswith("/"):
        return None  # a fingerprint: apt looks it up in trusted.gpg.d
    data = layers.read(path, MAX_KEYRING)
    if data is None:
        return None
    return str(keep_keyring(keyrings, data))


def _unsigned(source: Source) -> str:
    return Source(source.uri, source.suite, source.components, None, source.trusted).line()


def image_sources(layers: Layers, keyrings: Path) -> ImageSources:
    """The image's apt sources (signed-by rewritten to copied keyrings), the files they
    were read from, and the lines left out for want of their keyring."""
    files = [SOURCES_LIST] if layers.read(SOURCES_LIST) is not None else []
    files += [
        f"{SOURCES_PARTS}/{name}"
        for name in layers.listdir(SOURCES_PARTS)
        if name.endswith((".list", ".sources"))
    ]
    sources: list[Source] = []
    dropped: list[Dropped] = []
    for rel in files[:MAX_FILES]:
        data = layers.read(rel)
        if data is None:
            continue
        for source in parse(rel, data.decode(errors="replace")):
            if not source.uri.startswith(SCHEMES):
                continue  # file:, copy:, cdrom: would have kiln's apt read the host's files
            if source.inline_key:
                kept = keep_inline_key(source, keyrings)
                if kept is None:
                    dropped.append(Dropped("/" + rel, "inline", _unsigned(source)))
                else:
                    sources.append(kept)
                continue
            signed = source.signed_by
            if signed:
                copied = _keyring(layers, signed, keyrings)
                if copied is None and signed.startswith("/"):
                    # apt in the image could not check it either
                    dropped.append(Dropped("/" + rel, signed, _unsigned(source)))
                    continue
                signed = copied or signed
            sources.append(
                Source(source.uri, source.suite, source.components, signed, source.trusted)
            )
    return ImageSources(sources, ["/" + f for f in files], dropped)
