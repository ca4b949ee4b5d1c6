"""Paths inside a root seen from the host: resolve them as the root itself would.

An absolute symlink in an image points into the image, not onto the host, so resolution
re-roots it; ``..`` never climbs above the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.errors import BadInput

MAX_LINKS = 40


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path for ``path`` inside ``root``, following symlinks in all but the last part."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return root
    resolved: list[str] = []
    links = 0
    pending = parts[:-1]
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise BadInput(f"too many symlinks resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    last = parts[-1]
    if last == "..":
        return root.joinpath(*resolved[:-1])
    return root.joinpath(*resolved, last)


def _ids(file: Path, name: str) -> int | None:
    try:
        for line in file.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name:
                return int(fields[2])
    except FileNotFoundError:
        return None
    return None


def lookup_ids(root: Path, owner: str) -> tuple[int, int]:
    """'user' or 'user:group' -> (uid, gid), from the root's own passwd and group files."""
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else _ids(root / "etc/passwd", user)
    if uid is None:
        raise BadInput(
            f"user '{user}' does not exist in the image's /etc/passwd",
            hint="create it in an earlier step, or use a numeric id",
        )
    group = group or user
    gid = int(group) if group.isdigit() else _ids(root / "etc/group", group)
    if gid is None:
        raise BadInput(f"group '{group}' does not exist in the image's /etc/group")
    return uid, gid
