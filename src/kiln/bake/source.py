"""What a bake keeps of its recipe folder: the recipe and every file the cache key
records as an input (copied files and folders, playbooks), as the source archive
(kiln.store.archive) attached to the image beside its lock.

Members are paths relative to the recipe's folder (every symlink on the way resolved,
as the loader resolves them; a symlink the recipe names its input through is kept too,
so the path as written still leads there). An imported base's vendor file is not kept:
such an image keeps no lock either, and is not rebuilt by a proof. Nor is an archive a
proof would refuse to unpack (a symlink among the inputs that leads out of the folder):
such an image is proven from its checkout, as one baked before kiln kept archives.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.bake.cachekey import Material
from kiln.recipe import RecipeFile
from kiln.store import archive


def members(recipe: RecipeFile, materials: list[Material]) -> tuple[Path, list[str]] | None:
    """The recipe's folder (resolved) and the archive's members; None when an input lies
    outside the folder (the loader refuses that; nothing is kept then)."""
    folder = Path(os.path.realpath(recipe.folder))
    names = {recipe.path.name}
    for material in materials:
        if material.key == "image.import":
            continue
        if not material.source.is_relative_to(folder):
            return None
        names.add(str(material.source.relative_to(folder)) or ".")
        written = folder
        for part in Path(material.path).parts[:-1]:  # links on the way, as written
            written = written / part
            if written.is_symlink():
                names.add(str(written.relative_to(folder)))
    if "." in names:  # the whole folder is an input: it is all kept
        return folder, ["."]
    return folder, sorted(names)


def pack(recipe: RecipeFile, materials: list[Material], tmp: Path) -> bytes | None:
    """The source archive of a bake of ``recipe``; None when there is none to keep."""
    found = members(recipe, materials)
    if found is None:
        return None
    folder, names = found
    data = archive.pack(folder, names, tmp)
    return data if archive.readable(data) else None
