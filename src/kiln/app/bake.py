"""`kiln bake` and `kiln lock`: plan the recipes, then take each in lineage order.

A recipe's parent is resolved here, through the one resolver: a recipe baked earlier in
the same run is named by the ref that bake gave it; any other parent by the catalog (a
channel, ``base:prod``, names what it points at now). A revoked image is never a parent.

A bake whose every recipe is a cache hit is answered from the memos the last bake left
(kiln.bake.memo), without loading the recipe models or SQLAlchemy; anything else takes
the full path, whose modules load only then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kiln.app.workspace import Workspace
from kiln.bake import memo
from kiln.bake.options import Options
from kiln.bake.result import ONGOING, BakeResult
from kiln.catalog.lookup import Revoked
from kiln.recipe.limits import recipe_paths

if TYPE_CHECKING:
    from kiln.bake.lock import LockResult
    from kiln.bake.pipeline import Parent
    from kiln.recipe import RecipeFile

__all__ = ["ONGOING", "Options", "bake_path", "lock_path", "parent_of"]

Log = Callable[[str], None]  # a stage line; one ending in ONGOING is a stage starting
T = TypeVar("T")


def parent_of(workspace: Workspace, recipe: RecipeFile, ref: str | None) -> Parent | None:
    """The recipe's parent image: ``ref`` when an earlier bake of this run made it."""
    from kiln.app import resolve
    from kiln.bake.pipeline import Parent
    from kiln.recipe.lockfile import Deb

    ref = ref or recipe.recipe.image.parent
    if ref is None:
        return None
    try:  # usable: a revoked image (or one with a revoked ancestor) is never a parent
        row, image = resolve.image_and_bytes(workspace, ref)
    except Revoked as exc:
        raise Revoked(f"{recipe.path.name}: its parent {ref}: {exc.message}", exc.hint) from None
    packages = [
        Deb(p.name, p.architecture, p.version, p.sha256) for p in workspace.lookup.packages(row.id)
    ]
    return Parent(row, image, packages)


def _each(
    workspace: Workspace,
    target: Path,
    one: Callable[[RecipeFile, Parent | None], tuple[T, BakeResult]],
) -> list[T]:
    """Run ``one`` on every recipe of ``target`` in lineage order, each on its parent."""
    from kiln.bake.plan import parent_recipe, plan

    ordered, _named = plan(target)
    results: list[T] = []
    baked: dict[Path, str] = {}
    names: dict[str, str] = {}
    for recipe in ordered:
        parent = parent_of(workspace, recipe, parent_recipe(recipe, baked, names))
        result, made = one(recipe, parent)
        baked[recipe.path] = names[recipe.name] = made.ref
        results.append(result)
    return results


def bake_path(workspace: Workspace, target: Path, options: Options, log: Log) -> list[BakeResult]:
    """Bake a recipe (with its recipe-path ancestors) or a folder of recipes."""
    if not (options.no_cache or options.ignore_lock):
        hits = memo.cached(workspace, recipe_paths(target), options.mirror)
        if hits is not None:
            return hits
    from kiln.bake.pipeline import bake_image

    def one(recipe: RecipeFile, parent: Parent | None) -> tuple[BakeResult, BakeResult]:
        result = bake_image(workspace, recipe, parent, options, log)
        return result, result

    return _each(workspace, target, one)


def lock_path(
    workspace: Workspace, target: Path, update: bool, options: Options, log: Log
) -> list[LockResult]:
    """Lock a recipe (and its recipe-path ancestors) or a folder of recipes, in lineage
    order, baking each from its lock so its children lock against that image."""
    from kiln.bake.lock import lock_one

    def one(recipe: RecipeFile, parent: Parent | None) -> tuple[LockResult, BakeResult]:
        result = lock_one(workspace, recipe, parent, update, options, log)
        return result, result.baked[-1]

    return _each(workspace, target, one)
