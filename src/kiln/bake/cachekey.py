"""The cache key: sha256 over canonical JSON of every input of a bake.

Inputs: the parent's manifest digest, the normalised recipe (formatting and comments do
not count), the content of every file the steps read (each kind declares its inputs:
kiln.steps), the imported file, the lock file if there is one, and the versions of kiln's
pipeline and step kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kiln import steps
from kiln.bake import build, keydoc
from kiln.digests import file_sha256, tree_digest
from kiln.recipe import RecipeFile, lockfile
from kiln.recipe.lockfile import Lock


@dataclass(frozen=True)
class Material:
    """One file a bake reads besides the recipe: its key path, where it lies relative to
    the recipe's folder, whether its digest is of a ``file`` or a ``tree``, the digest."""

    key: str
    path: str
    kind: Literal["file", "tree"]
    digest: str
    source: Path  # where it is read from, absolute
    skip: tuple[str, ...] = ()  # names a tree digest leaves out


def materials(recipe: RecipeFile) -> list[Material]:
    """Every file a recipe reads: the inputs each step declares (kiln.steps), the import."""
    out: list[Material] = []
    for index, step in enumerate(recipe.recipe.steps):
        for item, relative in steps.inputs(step):
            path = item.locate(recipe.folder, relative)
            key = f"steps[{index}].{item.label}"
            if item.kind == "file":
                out.append(Material(key, relative, "file", file_sha256(path), path))
                continue
            shown = relative if item.kind == "tree" else _relative(path, recipe.folder)
            digest = tree_digest(path, skip_suffixes=item.skip)
            out.append(Material(key, shown, "tree", digest, path, tuple(item.skip)))
    imported = recipe.recipe.image.import_
    if imported is not None:
        source = recipe.resolve(imported)
        out.append(Material("image.import", imported, "file", file_sha256(source), source))
    return out


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def inputs(recipe: RecipeFile) -> dict[str, str]:
    """Digest of every file a recipe reads, by key path."""
    return {material.key: material.digest for material in materials(recipe)}


def kiln_versions() -> dict[str, Any]:
    """The versions of kiln's pipeline, its stages and step kinds, each declared where
    it is written (kiln.bake.build, kiln.steps): a change to what any of them writes into
    an image bumps one, and every image made with it is rebaked."""
    return {"pipeline": build.VERSION, "steps": steps.versions(), **build.stage_versions()}


def document(
    recipe: RecipeFile,
    parent_digest: str | None,
    *,
    lock: Lock | None,
    sources: list[str] | None = None,
    found: list[Material] | None = None,
) -> dict[str, Any]:
    """Everything the key is made of. ``lock``: the lock the bake is made from (None for
    kiln lock's resolving bake, which ignores it); ``sources``: for a Debian base, the
    mirror lines that end up in its sources.list; ``found``: the recipe's materials, if
    already hashed."""
    listed = materials(recipe) if found is None else found
    return keydoc.document(
        kiln=kiln_versions(),
        recipe=recipe.recipe.model_dump(mode="json", by_alias=True),
        parent=parent_digest,
        inputs={material.key: material.digest for material in listed},
        lock=lock.digest if lock is not None else None,
        sources=sources,
    )


def bake_document(
    recipe: RecipeFile,
    parent_digest: str | None,
    lock: Lock | None,
    mirror: str | None,
    found: list[Material],
) -> dict[str, Any]:
    """What the cache key of a bake of ``recipe`` on ``parent_digest`` from ``lock`` hashes
    (``mirror``: the mirror setting, a Debian base's fallback for its sources)."""
    spec = recipe.recipe.image.bootstrap
    return document(
        recipe,
        parent_digest,
        lock=lock,
        sources=keydoc.image_sources(spec.debian, spec.mirror, spec.components, mirror)
        if spec is not None
        else None,
        found=found,
    )


key_of = keydoc.key_of


def compute(
    recipe: RecipeFile,
    parent_digest: str | None,
    *,
    use_lock: bool = True,
    sources: list[str] | None = None,
) -> str:
    """The key of a bake (see :func:`document`); ``use_lock``: the lock beside the recipe
    counts, if there is one."""
    path = lockfile.lock_path(recipe.path)
    lock = lockfile.parse(path) if use_lock and path.is_file() else None
    return key_of(document(recipe, parent_digest, lock=lock, sources=sources))
