"""The cache key: sha256 over canonical JSON of every input of a bake.

Inputs: the parent's manifest digest, the normalised recipe (formatting and comments do
not count), the content of every file the steps read (each kind declares its inputs:
kiln.steps), the imported file, the lock file if there is one, and the versions of kiln's
pipeline and step kinds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kiln import steps
from kiln.bake import packages, seal, services
from kiln.bake.bases import debian, imported
from kiln.digests import file_sha256
from kiln.recipe import RecipeFile, lockfile
from kiln.store.layout import canonical_json

PIPELINE_VERSION = 1


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
    return hashlib.sha256(canonical_json(entries)).hexdigest()


@dataclass(frozen=True)
class Material:
    """One file a bake reads besides the recipe: its key path, where it lies relative to
    the recipe's folder, whether its digest is of a ``file`` or a ``tree``, the digest."""

    key: str
    path: str
    kind: Literal["file", "tree"]
    digest: str


def materials(recipe: RecipeFile) -> list[Material]:
    """Every file a recipe reads: the inputs each step declares (kiln.steps), the import."""
    out: list[Material] = []
    for index, step in enumerate(recipe.recipe.steps):
        for item, relative in steps.inputs(step):
            path = item.locate(recipe.folder, relative)
            key = f"steps[{index}].{item.label}"
            if item.kind == "file":
                out.append(Material(key, relative, "file", file_sha256(path)))
                continue
            shown = relative if item.kind == "tree" else _relative(path, recipe.folder)
            out.append(Material(key, shown, "tree", tree_digest(path, skip_suffixes=item.skip)))
    imported = recipe.recipe.image.import_
    if imported is not None:
        out.append(
            Material("image.import", imported, "file", file_sha256(recipe.resolve(imported)))
        )
    return out


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def inputs(recipe: RecipeFile) -> dict[str, str]:
    """Digest of every file a recipe reads, by key path."""
    return {material.key: material.digest for material in materials(recipe)}


def compute(
    recipe: RecipeFile,
    parent_digest: str | None,
    *,
    use_lock: bool = True,
    sources: list[str] | None = None,
) -> str:
    """The key of a bake. ``use_lock``: the lock beside the recipe counts (kiln lock's
    resolving bake ignores it); ``sources``: for a Debian base, the mirror lines that end
    up in its sources.list."""
    lock = lockfile.lock_path(recipe.path)
    lock_digest = file_sha256(lock) if use_lock and lock.is_file() else None
    document = {
        "kiln": {
            "pipeline": PIPELINE_VERSION,
            "steps": steps.versions(),
            "packages": packages.VERSION,
            "services": services.VERSION,
            "seal": seal.VERSION,
            "debian": debian.VERSION,
            "import": imported.VERSION,
        },
        "parent": parent_digest,
        "recipe": recipe.recipe.model_dump(mode="json", by_alias=True),
        "inputs": inputs(recipe),
        "lock": lock_digest,
        "sources": sources,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()
