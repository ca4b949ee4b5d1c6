"""The cache key: sha256 over canonical JSON of every input of a bake.

Inputs: the parent's manifest digest, the normalised recipe (formatting and comments do
not count), the content of every copied file and playbook folder, the imported file, the
lock file if there is one, and the versions of kiln's pipeline and step kinds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from kiln.bake import packages, seal, services
from kiln.bake.bases import debian, imported
from kiln.bake.steps import versions as step_versions
from kiln.digests import file_sha256
from kiln.recipe import RecipeFile, lockfile
from kiln.recipe.models import AnsibleStep, CopyStep
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


def inputs(recipe: RecipeFile) -> dict[str, str]:
    """Digest of every file a recipe reads, by key path."""
    out: dict[str, str] = {}
    for index, step in enumerate(recipe.recipe.steps):
        if isinstance(step, CopyStep):
            out[f"steps[{index}].copy"] = tree_digest(recipe.resolve(step.source))
        elif isinstance(step, AnsibleStep):
            # A playbook reads templates, files and roles beside it: the whole folder counts,
            # but not recipes and locks that happen to share it (they are never its inputs).
            out[f"steps[{index}].ansible"] = tree_digest(
                recipe.resolve(step.ansible).parent, skip_suffixes=(".toml", ".toml.lock")
            )
            out[f"steps[{index}].playbook"] = file_sha256(recipe.resolve(step.ansible))
    if recipe.recipe.image.import_ is not None:
        out["image.import"] = file_sha256(recipe.resolve(recipe.recipe.image.import_))
    return out


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
            "steps": step_versions(),
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
