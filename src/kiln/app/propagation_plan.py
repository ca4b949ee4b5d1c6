"""The plan of ``kiln propagate`` against the workspace: the catalog's image rows, the
parent each recipe names now (recorded by its bake, or read from a recipe changed since,
or from a ``--recipes`` folder), the channels' heads; the plan itself is
kiln.lifecycle.propagation's. It reads plain SQL and TOML only: no SQLAlchemy, no pydantic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from kiln.app import resolve
from kiln.app.workspace import Workspace
from kiln.catalog import propagations
from kiln.catalog.lookup import ImageRow, Lookup
from kiln.errors import BadInput
from kiln.lifecycle import propagation
from kiln.lifecycle.propagation import Plan, Row
from kiln.recipe.text import named_parent, recipe_bytes


class Parents(Mapping[str, str | None]):
    """Each name's parent as its recipe names it now, found when the plan asks (only for
    the names it holds): what the newest version's bake recorded, unless the recipe file
    changed since (its sha256 is not the one baked); then the file's own ``parent``,
    read as TOML alone, bounded like any recipe (one that does not read says nothing:
    its bake reports why)."""

    def __init__(self, lookup: Lookup, latest: dict[str, Row]) -> None:
        self._latest = latest
        self._recorded = propagations.parents_recorded(
            lookup, ((row.name, row.version) for row in latest.values())
        )
        self._found: dict[str, str | None] = {}

    def __getitem__(self, name: str) -> str | None:
        if name not in self._found:
            self._found[name] = self._read(name)
        return self._found[name]

    def _read(self, name: str) -> str | None:
        row = self._latest.get(name)
        if row is None:
            raise KeyError(name)
        recorded = self._recorded.get(name)
        data = recipe_bytes(row.recipe_path)
        if data is None:
            return recorded  # a recipe that is gone is the plan's to report
        if hashlib.sha256(data).hexdigest() == row.recipe_digest:
            return recorded
        return named_parent(row.recipe_path, data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


def _folder(folder: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """Every recipe in ``folder`` by image name, and the parent each names."""
    from kiln.recipe import load_recipes
    from kiln.recipe.limits import recipe_paths

    if not folder.is_dir():
        raise BadInput(f"--recipes {folder} is not a folder", hint="give the recipes' folder")
    paths = [path for path in recipe_paths(folder) if path.name != "kiln.toml"]
    recipes: dict[str, str] = {}
    named: dict[str, str | None] = {}
    for recipe in load_recipes(paths):
        if recipe.name in recipes:
            raise BadInput(
                f"{folder}: two recipes make the image {recipe.name}: "
                f"{recipes[recipe.name]} and {recipe.path}",
                hint="one recipe per image name in the folder propagate reads",
            )
        recipes[recipe.name] = str(recipe.path)
        named[recipe.name] = recipe.recipe.image.parent
    return recipes, named


def _row(image: ImageRow) -> Row:
    return Row(
        image.id,
        image.name,
        image.version,
        image.parent_id,
        image.digest,
        image.recipe_path,
        recipe_digest=image.recipe_digest,
    )


def make_plan(
    workspace: Workspace,
    ref: str,
    to: str | None = None,
    recipes: Path | None = None,
    include_pinned: bool = False,
) -> Plan:
    """The plan for the change ``ref`` names (``base``: its newest version)."""
    if to is not None:
        from kiln.lifecycle.channels import check_name

        check_name(to)
    lookup = workspace.lookup
    origin = resolve.image(workspace, ref)
    rows = [Row(*row) for row in propagations.plan_rows(lookup)]
    latest = propagation.newest(rows)
    named: Mapping[str, str | None] = Parents(lookup, latest)
    folder: dict[str, str] | None = None
    if recipes is not None:
        folder, named = _folder(recipes)
    heads = {
        (head.name, head.channel): head.image_id
        for head in lookup.head_rows()
        if head.image_id is not None
    }
    return propagation.plan(
        rows,
        _row(origin),
        named=named,
        recipes=folder,
        exists=os.path.isfile,
        heads=heads,
        to=to,
        include_pinned=include_pinned,
    )
