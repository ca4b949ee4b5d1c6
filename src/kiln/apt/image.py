"""The apt sources an image holds, read from its unpacked layers as overlayfs would merge
them: ``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` and ``*.sources``.

Layers are stacked as kiln.layers says overlayfs does, each read through kiln.rootpath:
a whiteout hides a path below it, an opaque folder the folder's lower contents. A symlink
is followed inside the image, never on the host: its target is looked up in the merged
layers again (at most :data:`MAX_LINKS` times).
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
from kiln.layers import Stack
from kiln.rootpath import Root

MAX_FILE = 1 << 20
MAX_FILES = 256
MAX_LINKS = 16
MAX_KEYRING = 1 << 20
SOURCES_LIST = "etc/apt/sources.list"
SOURCES_PARTS = "etc/apt/sources.list.d"
SCHEMES = ("http://", "https://")


class Layers:
    """An image's unpacked layers (bottom first), read merged."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)

    def _find(self, rel: str) -> tuple[Path, os.stat_result] | None:
        """The layer whose entry at ``rel`` is visible, and that entry (not followed)."""
        with Stack(self.dirs) as stack:
            found = stack.find(rel)
        return None if found is None else (self.dirs[found[0]], found[1])

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
        found = self.resolve(rel)
        if found is None or not stat.S_ISDIR(found[2].st_mode):
            return []
        with Stack(self.dirs) as stack:
            try:
                return sorted(stack.children(found[1]))
            except (OSError, KilnError):
                return []


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
