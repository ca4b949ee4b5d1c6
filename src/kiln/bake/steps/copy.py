"""`copy`: files or a folder's contents from beside the recipe into the root.

Destination paths are resolved the way they would be inside the root (absolute symlinks
are re-rooted), so a symlink in the image can never lead a copy out onto the host.
Owners default to root:root, whatever owns the files in the checkout.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from kiln.bake.context import BuildContext
from kiln.bake.rootpath import lookup_ids, resolve_in_root
from kiln.recipe.models import CopyStep

VERSION = 1


def apply(context: BuildContext, step: CopyStep, index: int) -> None:
    source = context.recipe.resolve(step.source)
    uid, gid = lookup_ids(context.root, step.owner) if step.owner else (0, 0)
    mode = int(step.mode, 8) if step.mode else None
    target = step.target
    if source.is_dir():
        base = target.rstrip("/") or "/"
        _make_dirs(context.root, base, 0, 0)
        for dirpath, dirnames, filenames in os.walk(source):
            rel = os.path.relpath(dirpath, source)
            here = base if rel == "." else f"{base.rstrip('/')}/{rel}"
            for name in sorted(dirnames):
                src = Path(dirpath) / name
                if src.is_symlink():
                    _put(context.root, f"{here.rstrip('/')}/{name}", src, uid, gid, mode)
                else:
                    _make_dir(
                        context.root,
                        f"{here.rstrip('/')}/{name}",
                        uid,
                        gid,
                        stat.S_IMODE(src.stat().st_mode),
                    )
            for name in sorted(filenames):
                _put(
                    context.root, f"{here.rstrip('/')}/{name}", Path(dirpath) / name, uid, gid, mode
                )
    else:
        if target.endswith("/"):
            target = target + source.name
        _make_dirs(context.root, target.rsplit("/", 1)[0] or "/", 0, 0)
        _put(context.root, target, source, uid, gid, mode)


def _make_dirs(root: Path, path: str, uid: int, gid: int) -> None:
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        _make_dir(root, "/" + "/".join(parts[:depth]), uid, gid, 0o755, keep=True)


def _make_dir(root: Path, path: str, uid: int, gid: int, mode: int, keep: bool = False) -> None:
    host = resolve_in_root(root, path)
    if host.is_dir():
        if keep:
            return
    else:
        if host.exists() or host.is_symlink():
            host.unlink()
        host.mkdir()
    os.chown(host, uid, gid, follow_symlinks=False)
    os.chmod(host, mode)


def _put(root: Path, path: str, src: Path, uid: int, gid: int, mode: int | None) -> None:
    parent, _, name = path.rstrip("/").rpartition("/")
    host_parent = resolve_in_root(root, parent or "/")
    if not host_parent.is_dir():
        raise NotADirectoryError(f"{parent} is not a folder in the image")
    dest = host_parent / name
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    if src.is_symlink():
        os.symlink(os.readlink(src), dest)
        os.chown(dest, uid, gid, follow_symlinks=False)
        return
    shutil.copyfile(src, dest, follow_symlinks=False)
    os.chown(dest, uid, gid)
    os.chmod(dest, mode if mode is not None else stat.S_IMODE(src.stat().st_mode))
