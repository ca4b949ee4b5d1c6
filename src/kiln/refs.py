"""Image references: the one grammar every command, recipe and catalog query uses.

- ``name``, ``name:latest``: the newest usable version of ``name``;
- ``name:3``: version 3 (versions count up from 1 per name);
- ``name:prod``: what the channel ``prod`` of ``name`` points at (a channel name starts
  with a letter, so it is never a version, and ``latest`` is never a channel);
- ``name@sha256:<hex>``: exactly that manifest.

Only the grammar lives here; which image a ref names is the catalog's answer
(``kiln.app.resolve``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import BadInput

MAX_NAME = 128
NAME = r"[a-z0-9][a-z0-9._-]*"
CHANNEL = r"[a-z][a-z0-9_-]*"
LATEST = "latest"
REF_RE = re.compile(
    rf"(?P<name>{NAME})"
    rf"(?::(?P<version>[0-9]+)|:(?P<channel>{CHANNEL})|@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)
HINT = "use name, name:version, name:latest, name:channel or name@sha256:<hex>"


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    channel: str | None = None  # never "latest": that is version None, channel None
    digest: str | None = None

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.channel is not None:
            return f"{self.name}:{self.channel}"
        return self.name

    @property
    def newest(self) -> bool:
        """The ref asks for the newest version (``name`` or ``name:latest``)."""
        return self.version is None and self.channel is None and self.digest is None


def is_ref(text: str) -> bool:
    return len(text) <= MAX_NAME + 72 and REF_RE.fullmatch(text) is not None


def parse(text: str) -> Ref:
    match = REF_RE.fullmatch(text) if len(text) <= MAX_NAME + 72 else None
    if match is None or len(match.group("name")) > MAX_NAME:
        raise BadInput(f"'{text}' is not an image ref", hint=HINT)
    name, version, channel, digest = match.group("name", "version", "channel", "digest")
    if channel == LATEST:
        channel = None
    return Ref(name, int(version) if version is not None else None, channel, digest)


def is_channel(text: str) -> bool:
    """A valid channel name: starts with a letter, is not ``latest``."""
    return text != LATEST and re.fullmatch(CHANNEL, text) is not None
