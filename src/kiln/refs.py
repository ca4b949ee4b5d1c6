"""Image references: the one grammar every command, recipe and catalog query uses.

- ``name``, ``name:latest``: the newest usable version of ``name``;
- ``name:3``: version 3 (versions count up from 1 per name, written without leading
  zeros, at most :data:`MAX_VERSION`: a signed 64-bit integer, as the catalog stores it);
- ``name:prod``: what the channel ``prod`` of ``name`` points at (a channel name starts
  with a letter, so it is never a version, and ``latest`` is never a channel);
- ``name@sha256:<hex>``: exactly that manifest.

Names and channels are at most :data:`MAX_NAME` characters (a DNS label's length).
Only the grammar lives here; which image a ref names is the catalog's answer
(``kiln.app.resolve``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import BadInput, shown

MAX_NAME = 63  # an image or channel name
MAX_VERSION = 2**63 - 1  # a version number: what a signed 64-bit integer holds
NAME = r"[a-z0-9][a-z0-9._-]*"
CHANNEL = r"[a-z][a-z0-9_-]*"
VERSION = r"[1-9][0-9]*"
LATEST = "latest"
REF_RE = re.compile(
    rf"(?P<name>{NAME})"
    rf"(?::(?P<version>{VERSION})|:(?P<channel>{CHANNEL})|@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)
HINT = "use name, name:version, name:latest, name:channel or name@sha256:<hex>"
NAME_RULE = (
    f"lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, "
    f"at most {MAX_NAME} characters"
)
CHANNEL_RULE = (
    f"lower-case letters, digits, '-' and '_', starting with a letter, at most {MAX_NAME} "
    "characters, never latest"
)
VERSION_RULE = f"a whole number from 1 to {MAX_VERSION}, without leading zeros"
_LONGEST = MAX_NAME + 72  # name@sha256:<64 hex>


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


def problem(text: str) -> str | None:
    """Why ``text`` is not an image ref, or None when it is one."""
    if len(text) > _LONGEST:
        return f"{shown(text)} is not an image ref: it is too long"
    match = REF_RE.fullmatch(text)
    if match is None:
        return f"'{text}' is not an image ref{_why(text)}"
    name, version, channel = match.group("name", "version", "channel")
    if len(name) > MAX_NAME:
        return f"'{text}' is not an image ref: a name is at most {MAX_NAME} characters"
    if version is not None and int(version) > MAX_VERSION:
        return f"'{text}' is not an image ref: a version is {VERSION_RULE}"
    if channel is not None and len(channel) > MAX_NAME:
        return f"'{text}' is not an image ref: a channel name is at most {MAX_NAME} characters"
    return None


def _why(text: str) -> str:
    """What is wrong in a ref the grammar does not match, where a part can say it."""
    name = re.split("[:@]", text, maxsplit=1)[0]
    if not re.fullmatch(NAME, name):
        return f": a name is {NAME_RULE}"
    _, colon, tail = text.partition(":")
    if "@" in text:
        return ""
    if colon and re.fullmatch(r"[0-9]+", tail):
        return f": a version is {VERSION_RULE}"
    if colon and tail:
        return f": after ':' comes a version or a channel ({CHANNEL_RULE})"
    return ""


def is_ref(text: str) -> bool:
    return problem(text) is None


def parse(text: str) -> Ref:
    why = problem(text)
    if why is not None:
        raise BadInput(why, hint=HINT)
    match = REF_RE.fullmatch(text)
    assert match is not None  # problem() matched it
    name, version, channel, digest = match.group("name", "version", "channel", "digest")
    if channel == LATEST:
        channel = None
    return Ref(name, int(version) if version is not None else None, channel, digest)


def is_channel(text: str) -> bool:
    """A valid channel name: starts with a letter, is not ``latest``, is not too long."""
    return channel_problem(text) is None


def channel_problem(text: str) -> str | None:
    """Why ``text`` is not a channel name (a message to end an error with), or None."""
    if text == LATEST:
        return "latest always means the newest version that is not revoked"
    if len(text) > MAX_NAME:
        return f"a channel name is at most {MAX_NAME} characters, not {len(text)}"
    if re.fullmatch(CHANNEL, text) is None:
        return f"a channel name is {CHANNEL_RULE}" + (
            " (a number is a version)" if text.isdigit() else ""
        )
    return None
