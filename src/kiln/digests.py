"""sha256 of files, streamed in 1 MiB chunks, and of whole trees (one helper for the store,
the package cache and cache keys)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20


def canonical_json(value: Any, errors: str = "strict") -> bytes:
    """JSON with sorted keys and no spaces: equal values give equal bytes (and digests).
    ``errors="surrogateescape"``: a file name that is not UTF-8 (Python holds its bytes as
    lone surrogates) is written as those bytes, for kiln's own documents only."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", errors)


def digest_of(data: bytes) -> str:
    """The OCI digest of ``data``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def json_sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def file_sha256_of(handle: BinaryIO) -> str:
    """sha256 of what is left to read from an open binary file."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return file_sha256_of(handle)


def tree_digest(path: Path, skip_suffixes: tuple[str, ...] = ()) -> str:
    """Digest of a file or folder: names, types, modes, link targets and contents.

    Entries whose names end with one of ``skip_suffixes`` are left out.
    """
    entries: list[list[Any]] = []

    def entry(full: Path, rel: str) -> None:
        st = full.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append([rel, "link", os.readlink(full)])
        elif stat.S_ISDIR(st.st_mode):
            entries.append([rel, "dir", mode])
        else:
            entries.append([rel, "file", mode, file_sha256(full)])

    entry(path, ".")  # a file and a folder holding that file differ
    if path.is_dir() and not path.is_symlink():
        entries[0] = [".", "dir"]  # the top folder's own mode is not copied
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                if name.endswith(skip_suffixes):
                    continue
                full = Path(dirpath) / name
                entry(full, str(full.relative_to(path)))
    return json_sha256(entries)


def input_digest(kind: str, source: Path, skip: tuple[str, ...] = ()) -> str:
    """The digest a cache key holds for an input: of a ``file``, or of a ``tree``."""
    return file_sha256(source) if kind == "file" else tree_digest(source, skip_suffixes=skip)
