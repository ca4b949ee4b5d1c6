"""The docs match the code: every recipe key is documented, every recipe example in them
loads through the loader kiln bakes with, and every command is in the README."""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from kiln import steps
from kiln.cli.main import cli
from kiln.recipe import load_recipe
from kiln.recipe.load import is_recipe_path
from kiln.recipe.models import Recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES_MD = REPO / "docs" / "recipes.md"
README = REPO / "README.md"
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
IMAGE_TABLE = re.compile(r"^\[image\][^\n]*\n(?:(?!\[)[^\n]*\n)*?\s*name\s*=", re.MULTILINE)


def nested_models(annotation: object) -> Iterator[type[BaseModel]]:
    """Every pydantic model inside a field's type: X, X | None, tuple[X, ...], dict[str, X],
    Annotated[A | B, ...]."""
    if (
        typing.get_origin(annotation) is None
        and isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
    ):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from nested_models(argument)


def recipe_models() -> dict[type[BaseModel], list[str]]:
    """Every model reachable from Recipe, with its keys as a recipe spells them (aliases)."""
    found: dict[type[BaseModel], list[str]] = {}
    todo: list[type[BaseModel]] = [Recipe]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found[model] = []
        for name, field in model.model_fields.items():
            found[model].append(field.alias or name)
            todo.extend(nested_models(field.annotation))
    return found


RECIPE_KEYS = sorted(
    {(model.__name__, key) for model, keys in recipe_models().items() for key in keys}
)


def test_the_walk_reaches_nested_models_and_uses_aliases() -> None:
    names = {model.__name__ for model in recipe_models()}
    assert {"ImageSection", "Bootstrap", "CopyStep", "ConfigKey", "Health", "Seal"} <= names
    keys = {key for _model, key in RECIPE_KEYS}
    assert {"import", "copy", "source_date_epoch", "paths"} <= keys
    assert "import_" not in keys and "source" not in keys


@pytest.mark.parametrize(("model", "key"), RECIPE_KEYS)
def test_every_recipe_key_is_in_the_reference(model: str, key: str) -> None:
    """As `key`, or as a table header `[key]` / `[[key]]` for the top-level tables."""
    text = RECIPES_MD.read_text()
    pattern = rf"`(\[\[?)?{re.escape(key)}(\]\]?)?`"
    assert re.search(pattern, text), f"{model}.{key} is not documented in docs/recipes.md"


def recipe_examples() -> list[tuple[str, str]]:
    """(file:line, text) of every ```toml block with an [image] table that has a name."""
    found: list[tuple[str, str]] = []
    for path in (RECIPES_MD, README):
        text = path.read_text()
        for match in TOML_BLOCK.finditer(text):
            block = match.group(1)
            if "..." in block or not IMAGE_TABLE.search(block):
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.name}:{line}", block))
    return found


def test_the_reference_has_recipe_examples() -> None:
    assert sum(where.startswith("recipes.md") for where, _block in recipe_examples()) >= 4


@pytest.mark.parametrize(
    ("where", "block"), [pytest.param(*example, id=example[0]) for example in recipe_examples()]
)
def test_every_recipe_example_loads(where: str, block: str, tmp_path: Path) -> None:
    data = tomllib.loads(block)
    assert isinstance(data["image"]["name"], str), where
    path = tmp_path / "recipe.toml"
    path.write_bytes(block.encode())
    beside(tmp_path, data)
    loaded = load_recipe(path)  # the loader kiln bakes with: file:line checks and all
    assert loaded.name == data["image"]["name"], where


def beside(folder: Path, data: dict[str, Any]) -> None:
    """Make the files an example names beside it (a parent recipe, an archive to import,
    what its steps read), as its recipe folder would hold them."""
    image = data["image"]
    wanted: list[tuple[str, str]] = []
    if is_recipe_path(str(image.get("parent", ""))):
        wanted.append((image["parent"], '[image]\nname = "parent"\nparent = "tiny:1"\n'))
    if "import" in image:
        wanted.append((image["import"], ""))
    for table in data.get("steps", []):
        wanted += [(str(relative), "") for _item, relative in steps.raw_inputs(table)]
    for relative, text in wanted:
        target = folder / relative
        if not target.resolve().is_relative_to(folder.resolve()):
            continue  # the loader refuses it, and this test writes in its own folder only
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@pytest.mark.parametrize(
    "command", sorted(name for name, command in cli.load_all().items() if not command.hidden)
)
def test_every_command_is_in_the_readme(command: str) -> None:
    assert re.search(rf"\bkiln {re.escape(command)}\b", README.read_text()), (
        f"kiln {command} is not mentioned in README.md"
    )
