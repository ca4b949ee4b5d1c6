"""What a rebuild proof (kiln.app.proof) rebakes each image of the chain from, checked
against what the image was baked from before anything is baked.

An image that keeps a source archive (kiln.store.archive) is rebuilt from it: unpacked
into the proof's own home, member by member as hostile input, then the recipe checked
against the digest the catalog keeps, each input against the digest the bake's
provenance recorded, and the cache key they give against the image's. An image baked
before kiln kept source archives is rebuilt from the recipe folder as it is now: the same
checks on the checkout, then the recipe and its inputs copied in. Either way the stored
lock goes beside a locked recipe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.catalog.lookup import ImageRow
from kiln.digests import file_sha256
from kiln.errors import BadInput, KilnError
from kiln.lifecycle.proofs import Changed, changed_inputs, recorded_inputs
from kiln.recipe import lockfile
from kiln.recipe.limits import MAX_RECIPE_BYTES, read_regular
from kiln.recipe.lockfile import Lock
from kiln.store import archive

if TYPE_CHECKING:
    from kiln.bake.options import Options
    from kiln.recipe import RecipeFile

NO_ARCHIVE = "the recipe folder changed since the bake and the image keeps no source archive"


class CannotRebuild(BadInput):
    """A proof that cannot start: nothing is rebuilt or recorded (exit 2)."""


@dataclass
class Link:
    """One image of the chain, with what its bake recorded."""

    row: ImageRow
    lock_text: bytes
    lock: Lock
    locked: bool  # baked from a lock file (else from the packages it resolved to)
    provenance: dict[str, Any]
    source: bytes | None = None  # its source archive; None: baked before kiln kept one
    rebuilt: str = ""
    ok: bool = False
    diff: dict[str, Any] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.row.ref,
            "digest": self.row.digest,
            "rebuilt": self.rebuilt or None,
            "ok": self.ok,
            "locked": self.locked,
            "source": "archive" if self.source is not None else "checkout",
            "diff": self.diff,
            "note": self.note or None,
        }


def check_inputs(link: Link, options: Options, path: Path | None = None) -> list[Changed]:
    """What of the recipe and its inputs (at ``path``: the catalog's recipe path unless
    given) is not what the image was baked from."""
    from kiln.bake import cachekey
    from kiln.recipe import load_recipe

    row = link.row
    path = path or Path(row.recipe_path)
    expected = f"sha256:{row.recipe_digest}"
    try:
        data = read_regular(path, MAX_RECIPE_BYTES, "recipe")
    except BadInput:  # not there, not a regular file, too large
        return [Changed(str(path), "recipe", path.name, expected, None)]
    found = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if found != expected:
        return [Changed(str(path), "recipe", path.name, expected, found)]
    recorded = recorded_inputs(link.provenance)
    try:
        recipe = load_recipe(path)
    except BadInput as exc:
        gone = [
            Changed(str(path), key, rel, f"sha256:{digest}", None)
            for key, (rel, digest) in sorted(recorded.items())
            if not os.path.lexists(path.parent / rel)
        ]
        return gone or [Changed(str(path), "recipe folder", path.name, expected, str(exc))]
    found_now = cachekey.materials(recipe)
    now = [(m.key, m.path, m.digest) for m in found_now]
    changed = changed_inputs(str(path), recorded, now)
    if changed:
        return changed
    # kiln's own step and pipeline versions and a base's Debian sources count here too
    keyed = link.lock if link.locked else None
    key = cachekey.key_of(
        cachekey.bake_document(recipe, link.lock.parent, keyed, options.mirror, found_now)
    )
    if key != row.cache_key:
        return [Changed(str(path), "cache key", path.name, row.cache_key, key)]
    return []


def place(link: Link, top: Path, options: Options, parent: RecipeFile | None = None) -> RecipeFile:
    """The recipe and its inputs in the scratch home under ``top``: unpacked from the
    image's source archive and checked against the record, or copied from the checkout
    (checked already) for an image that keeps none. ``parent``: the chain's parent recipe
    as placed, put where a recipe-path parent names it."""
    if link.source is None:
        return _copy_recipe(link, top)
    from kiln.recipe import load_recipe

    row = link.row
    recorded = Path(row.recipe_path)
    dest = top / str(recorded.parent).lstrip("/")
    what = f"the source archive of {row.ref}"
    try:
        archive.unpack(link.source, dest, what)
    except archive.BadArchive as exc:
        raise CannotRebuild(exc.message, hint=exc.hint) from None
    path = _recipe_in(dest, recorded.name, row.recipe_digest)
    if path is None:
        raise CannotRebuild(f"{what} holds no recipe with the digest sha256:{row.recipe_digest}")
    _parent_recipe(path, top, parent, what)
    changed = check_inputs(link, options, path)
    if changed:
        raise CannotRebuild(
            f"{what} does not hold what {row.ref} was baked from: " + changed[0].line(),
            hint="kiln fsck",
        )
    if link.locked:
        lockfile.lock_path(path).write_bytes(link.lock_text)
    return load_recipe(path)


def _parent_recipe(path: Path, top: Path, parent: RecipeFile | None, what: str) -> None:
    """The recipe file a recipe-path parent (``parent = "base.toml"``) names, made from the
    chain's parent: the loader wants it there, and the bake is handed the parent itself.
    (``path`` is the recipe checked against its digest: the bytes it was baked from.)"""
    from kiln.recipe.load import is_recipe_path
    from kiln.recipe.text import named_parent, recipe_bytes

    data = recipe_bytes(path)  # read as the loader reads it: bounded, a regular file
    named = named_parent(path, data) if data is not None else None
    if named is None or not is_recipe_path(named):
        return  # the check that follows reports a recipe it cannot read
    target = Path(os.path.realpath(path.parent / named))
    if parent is None or not target.is_relative_to(top):
        raise CannotRebuild(f"{what}: its parent recipe {named} cannot be placed beside it")
    if not os.path.lexists(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent.path, target)


def _recipe_in(folder: Path, name: str, digest: str) -> Path | None:
    """The recipe file an unpacked archive holds: by the catalog's file name, else (a
    version made again from another recipe file's bake) the one with the digest."""
    candidates = [folder / name, *sorted(folder.glob("*.toml"))]
    for path in candidates:
        if path.is_file() and not path.is_symlink() and file_sha256(path) == digest:
            return path
    return None


def _copy_recipe(link: Link, top: Path) -> RecipeFile:
    """The recipe and its inputs copied under ``top`` at their own absolute paths (so a
    parent named by a relative recipe path is found too), with the stored lock beside a
    locked recipe; the copy is checked against the record again.

    What is copied is what the loader finds the recipe reads (inside its folder, as it
    checks), never a path read from the stored provenance."""
    from kiln.bake import cachekey
    from kiln.recipe import load_recipe

    original = load_recipe(Path(os.path.realpath(link.row.recipe_path)))
    folder = original.folder

    def place(source: Path) -> Path:
        target = top / str(source).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    copy = place(original.path)
    shutil.copyfile(original.path, copy)
    for material in cachekey.materials(original):
        source = material.source
        if not source.is_relative_to(folder):
            raise KilnError(f"{original.path}: {material.key} reads {source}, outside {folder}")
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, place(source), symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, place(source), follow_symlinks=False)
    parent = original.parent_recipe_path()
    if parent is not None and not place(parent).exists():
        shutil.copyfile(parent, place(parent))
    if link.locked:
        lockfile.lock_path(copy).write_bytes(link.lock_text)
    recipe = load_recipe(copy)
    if recipe.digest != link.row.recipe_digest:
        raise KilnError(f"{original.path} changed while it was being copied", hint="prove it again")
    now = [(m.key, m.path, m.digest) for m in cachekey.materials(recipe)]
    changed = changed_inputs(str(original.path), recorded_inputs(link.provenance), now)
    if changed:
        raise KilnError(changed[0].line() + " (while it was being copied)", hint="prove it again")
    return recipe
