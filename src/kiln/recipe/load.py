"""Load recipes from TOML: validate everything, report every problem at once.

A recipe that loads is a frozen :class:`Recipe` plus the facts about its files that
the bake needs (its folder, its digest). Nothing here runs a command.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kiln.errors import NotFound, Problem, RecipeError
from kiln.recipe.locate import KeyPath, LineIndex, format_path
from kiln.recipe.models import STEP_KINDS, Recipe

REF_RE = r"[a-z0-9][a-z0-9._-]*(:[0-9]+|:latest|@sha256:[0-9a-f]{64})?"


@dataclass(frozen=True)
class RecipeFile:
    """A validated recipe and where it came from."""

    path: Path  # absolute
    recipe: Recipe
    digest: str  # sha256 of the file's bytes
    lines: LineIndex = field(compare=False, repr=False)

    def where(self, *path: str | int) -> str:
        """'file:line' of a key path, for messages about a recipe."""
        line = self.lines.line_of(path)
        return f"{self.path}:{line}" if line else str(self.path)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.recipe.image.name

    def parent_recipe_path(self) -> Path | None:
        """The parent's recipe file, when ``parent`` names one rather than a catalog ref."""
        parent = self.recipe.image.parent
        if parent is not None and is_recipe_path(parent):
            return (self.folder / parent).resolve()
        return None

    def resolve(self, relative: str) -> Path:
        return (self.folder / relative).resolve()


def is_recipe_path(parent: str) -> bool:
    return parent.endswith(".toml")


def inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _pydantic_problems(file: str, index: LineIndex, error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc: list[str | int] = list(item["loc"])
        # Tagged unions put the tag into the location: steps.2.copy.to -> steps.2.to
        if len(loc) >= 3 and loc[0] == "steps" and loc[2] in STEP_KINDS:
            del loc[2]
        loc = ["import" if part == "import_" else part for part in loc]
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/recipes.md)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(Problem(file, index.line_of(loc), format_path(loc), message))
    return problems


def _raw_problems(file: str, folder: Path, index: LineIndex, raw: dict[str, Any]) -> list[Problem]:
    """Checks on the raw TOML that the schema cannot make: which origin, and file inputs.

    They read the raw data defensively, so they run even when the schema check fails and
    every problem is reported in one go.
    """
    problems: list[Problem] = []

    def problem(path: KeyPath, message: str) -> None:
        problems.append(Problem(file, index.line_of(path), format_path(path), message))

    def check_input(path: KeyPath, relative: object, what: str) -> None:
        if not isinstance(relative, str) or not relative:
            return  # the schema reports it
        if Path(relative).is_absolute():
            problem(path, f"{what} must be a path relative to the recipe's folder")
            return
        target = (folder / relative).resolve()
        if not inside(target, folder):
            problem(
                path,
                f"'{relative}' is outside the recipe's folder {folder}; "
                "keep inputs beside the recipe",
            )
        elif not target.exists():
            problem(path, f"'{relative}' does not exist (looked for {target})")

    steps = raw.get("steps")
    for number, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        if "copy" in step:
            check_input(("steps", number, "copy"), step["copy"], "copy")
        if "ansible" in step:
            check_input(("steps", number, "ansible"), step["ansible"], "ansible")
            playbook = step["ansible"]
            if isinstance(playbook, str) and not playbook.endswith((".yml", ".yaml")):
                problem(("steps", number, "ansible"), "a playbook is a .yml or .yaml file")

    image = raw.get("image")
    if not isinstance(image, dict):
        return problems
    given = [k for k in ("parent", "bootstrap", "import") if k in image]
    if len(given) > 1:
        problem(
            ("image", given[1]),
            f"{' and '.join(given)} are mutually exclusive: an image has one parent, one "
            "bootstrap, one import, or none of them (scratch)",
        )
    parent = image.get("parent")
    if isinstance(parent, str):
        if is_recipe_path(parent):
            if not (folder / parent).resolve().is_file():
                problem(("image", "parent"), f"parent recipe '{parent}' does not exist")
        elif not re.fullmatch(REF_RE, parent):
            problem(
                ("image", "parent"),
                f"'{parent}' is neither a recipe path (*.toml) nor an image ref "
                "(name, name:version or name@sha256:...)",
            )
    imported = image.get("import")
    if isinstance(imported, str) and not (folder / imported).resolve().is_file():
        problem(
            ("image", "import"),
            f"'{imported}' does not exist (looked for {(folder / imported).resolve()})",
        )
    return problems


def load_recipe(path: Path) -> RecipeFile:
    """Load and validate one recipe; raise RecipeError listing every problem."""
    path = path.resolve()
    file = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no recipe at {path}", hint="give the path of a .toml recipe") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a folder, not a recipe file") from None
    try:
        text = data.decode()
        raw: dict[str, Any] = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem(file, None, "", f"not UTF-8 text: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise RecipeError([Problem(file, line, "", f"TOML syntax: {message}")]) from None

    index = LineIndex(text)
    problems = _raw_problems(file, path.parent, index, raw)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(file, index, exc) + problems
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise RecipeError(problems, hint="see docs/recipes.md for every key")
    return RecipeFile(
        path=path, recipe=recipe, digest=hashlib.sha256(data).hexdigest(), lines=index
    )


def recipe_paths(target: Path) -> list[Path]:
    """A recipe file, or every *.toml directly inside a folder."""
    if target.is_dir():
        found = sorted(p for p in target.glob("*.toml") if p.is_file())
        if not found:
            raise NotFound(f"no *.toml recipes in {target}")
        return found
    return [target]


def load_recipes(paths: Iterable[Path]) -> list[RecipeFile]:
    """Load several recipes, collecting the problems of all of them before failing."""
    loaded: list[RecipeFile] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            loaded.append(load_recipe(path))
        except RecipeError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecipeError(problems, hint="see docs/recipes.md for every key")
    return loaded
