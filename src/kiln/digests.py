"""sha256 of files, streamed in 1 MiB chunks (one helper for the store, cache and keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def file_sha256_of(handle: BinaryIO) -> str:
    """sha256 of what is left to read from an open binary file."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return file_sha256_of(handle)
