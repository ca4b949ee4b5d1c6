"""A Packages index read within bounds: the fields kiln needs from each paragraph, and
the newest version of each package and architecture in it.

A repository can serve anything, so the index is read line by line, at most
:data:`MAX_INDEX` bytes and :data:`MAX_PARAGRAPHS` paragraphs (past either it is refused);
a line longer than :data:`MAX_LINE` is skipped to its end, never read for fields from its
middle; a paragraph with a malformed name, version, architecture, hash or file name (``..``,
an absolute path) is skipped.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.apt import versions
from kiln.errors import BadInput, KilnError

MAX_INDEX = 512 << 20  # Debian's amd64 main index is about 45 MiB
MAX_PARAGRAPHS = 1_000_000
MAX_LINE = 64 << 10
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
WANTED = {b"Package", b"Version", b"Architecture", b"Filename", b"SHA256", b"Size"}


def opened(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix in (".lz4", ".zst", ".lzma"):
        raise KilnError(f"{path}: an index compressed as {path.suffix} (kiln asks apt for none)")
    return path.open("rb")


def paragraphs(handle: io.BufferedIOBase, where: str) -> Iterator[dict[bytes, bytes]]:
    """The wanted fields of each paragraph of a Packages index, bounded."""
    total = 0
    count = 0
    fields: dict[bytes, bytes] = {}
    cut = False  # the line before was longer than MAX_LINE: this is the rest of it
    while True:
        line = handle.readline(MAX_LINE)
        total += len(line)
        if total > MAX_INDEX:
            raise BadInput(f"{where} is larger than {MAX_INDEX} bytes: not read")
        was_cut, cut = cut, bool(line) and not line.endswith(b"\n")
        if was_cut:
            continue  # never read a field out of the middle of a long line
        if not line or line in (b"\n", b"\r\n"):
            if fields:
                count += 1
                if count > MAX_PARAGRAPHS:
                    raise BadInput(f"{where} has more than {MAX_PARAGRAPHS} paragraphs: not read")
                yield fields
                fields = {}
            if not line:
                return
            continue
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation line: no wanted field spans lines
        name, colon, value = line.partition(b":")
        if colon and name in WANTED:
            fields[name] = value.strip()


def parse_packages(handle: io.BufferedIOBase, where: str) -> dict[str, dict[str, list[Any]]]:
    """name -> arch -> [version, filename, sha256, size]: the newest of each in the index."""
    out: dict[str, dict[str, list[Any]]] = {}
    for fields in paragraphs(handle, where):
        try:
            name = fields[b"Package"].decode()
            version = fields[b"Version"].decode()
            arch = fields[b"Architecture"].decode()
            filename = fields.get(b"Filename", b"").decode()
            sha256 = fields.get(b"SHA256", b"").decode()
            size = int(fields.get(b"Size", b"0"))
        except (KeyError, UnicodeDecodeError, ValueError):
            continue
        if not (NAME_RE.match(name) and ARCH_RE.match(arch) and versions.valid(version)):
            continue
        if sha256 and not SHA256_RE.match(sha256):
            continue
        if len(filename) > 1024 or ".." in filename.split("/") or filename.startswith("/"):
            continue
        by_arch = out.setdefault(name, {})
        have = by_arch.get(arch)
        if have is None or versions.compare(version, have[0]) > 0:
            by_arch[arch] = [version, filename, sha256, max(size, 0)]
    return out
