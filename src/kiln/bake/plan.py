"""Which recipes to bake, in which order.

Baking a recipe bakes its recipe-path ancestors first (each a cache hit when nothing
changed). Within a folder, a recipe whose parent names another recipe's image is baked
after it. Cycles are refused.
"""

from __future__ import annotations

from pathlib import Path

from kiln import refs
from kiln.errors import Problem, RecipeError
from kiln.recipe import RecipeFile, load_recipes
from kiln.recipe.limits import recipe_paths

PARENT = ("image", "parent")


def plan(target: Path) -> tuple[list[RecipeFile], list[RecipeFile]]:
    """(every recipe to bake in lineage order, the recipes the user named)."""
    named = load_recipes(recipe_paths(target))
    by_path: dict[Path, RecipeFile] = {r.path: r for r in named}
    pending = [r for r in named]
    while pending:  # pull in recipe-path ancestors
        recipe = pending.pop()
        parent = recipe.parent_recipe_path()
        if parent is not None and parent not in by_path:
            [loaded] = load_recipes([parent])
            by_path[parent] = loaded
            pending.append(loaded)
    by_name: dict[str, list[RecipeFile]] = {}
    for recipe in by_path.values():
        by_name.setdefault(recipe.name, []).append(recipe)

    def parent_of(recipe: RecipeFile) -> RecipeFile | None:
        path = recipe.parent_recipe_path()
        if path is not None:
            return by_path[path]
        parent = recipe.recipe.image.parent
        if parent is not None and refs.is_ref(parent) and refs.parse(parent).newest:
            candidates = by_name.get(parent, [])
            if len(candidates) == 1:
                return candidates[0]
        return None

    ordered: list[RecipeFile] = []
    state: dict[Path, str] = {}

    def visit(recipe: RecipeFile, trail: list[RecipeFile]) -> None:
        mark = state.get(recipe.path)
        if mark == "done":
            return
        if mark == "visiting":
            members = trail[[r.path for r in trail].index(recipe.path) :]
            cycle = " -> ".join(r.path.name for r in [*members, recipe])
            why = f"recipes form a cycle: {cycle}"
            raise RecipeError(
                [
                    Problem(str(r.path), r.lines.line_of(PARENT), "image.parent", why)
                    for r in members
                ],
                hint="an image cannot be its own ancestor",
            )
        state[recipe.path] = "visiting"
        parent = parent_of(recipe)
        if parent is not None:
            visit(parent, [*trail, recipe])
        state[recipe.path] = "done"
        ordered.append(recipe)

    for recipe in sorted(by_path.values(), key=lambda r: str(r.path)):
        visit(recipe, [])
    return ordered, named


def parent_recipe(recipe: RecipeFile, baked: dict[Path, str], names: dict[str, str]) -> str | None:
    """The ref of a parent baked earlier in this run, if the parent is one of them."""
    path = recipe.parent_recipe_path()
    if path is not None:
        return baked[path]
    parent = recipe.recipe.image.parent
    if parent is not None and parent in names:
        return names[parent]
    return None
