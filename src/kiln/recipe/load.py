"""Load recipes from TOML: validate everything, report every problem at once.

A recipe that loads is a frozen :class:`Recipe` plus the facts about its files that
the bake needs (its folder, its digest). Nothing here runs a command.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kiln import refs
from kiln.errors import NotFound, Problem, RecipeError
from kiln.recipe import limits
from kiln.recipe.keylines import KeyPath, LineIndex, format_path
from kiln.recipe.models import STEP_KINDS, Recipe
from kiln.recipe.text import parse_toml as parse_toml
from kiln.steps import raw_inputs as step_inputs


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
            return Path(os.path.realpath(self.folder / parent))
        return None

    def resolve(self, relative: str) -> Path:
        return Path(os.path.realpath(self.folder / relative))


def is_recipe_path(parent: str) -> bool:
    return parent.endswith(".toml")


def inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def pydantic_problems(
    file: str, index: LineIndex, error: ValidationError, reference: str = "docs/recipes.md"
) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc: list[str | int] = list(item["loc"])
        # Tagged unions put the tag into the location: steps.2.copy.to -> steps.2.to
        if len(loc) >= 3 and loc[0] == "steps" and loc[2] in STEP_KINDS:
            del loc[2]
        loc = ["import" if part == "import_" else part for part in loc]
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown key (check its spelling against {reference})"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        elif item["type"] in ("int_type", "bool_type") and isinstance(item["input"], str):
            # kiln never converts a string: say what to write instead
            unquoted = "a number" if item["type"] == "int_type" else "true or false"
            message += f", not the string {item['input']!r} (write {unquoted}, without quotes)"
        problems.append(Problem(file, index.line_of(loc), format_path(loc), message))
    return problems


def _real(path: Path) -> Path:
    """``path`` with every symlink resolved; a loop is left unresolved (stat reports it)."""
    return Path(os.path.realpath(path))


def _raw_problems(file: str, folder: Path, index: LineIndex, raw: dict[str, Any]) -> list[Problem]:
    """Checks on the raw TOML that the schema cannot make: which origin, and file inputs
    (each step kind declares the files it reads: :mod:`kiln.steps`).

    They read the raw data defensively, so they run even when the schema check fails and
    every problem is reported in one go.
    """
    problems: list[Problem] = []

    def problem(path: KeyPath, message: str) -> None:
        problems.append(Problem(file, index.line_of(path), format_path(path), message))

    def check_input(path: KeyPath, relative: object, what: str, kinds: str) -> None:
        """``kinds``: 'file' (a regular file) or 'tree' (a regular file or a folder of
        regular files, folders and symlinks)."""
        if not isinstance(relative, str) or not relative or "\0" in relative:
            return  # the schema, or the value check, reports it
        if Path(relative).is_absolute():
            problem(path, f"{what} must be a path relative to the recipe's folder")
            return
        target = _real(folder / relative)
        if not inside(target, folder):
            problem(
                path,
                f"'{relative}' is outside the recipe's folder {folder}; "
                "keep inputs beside the recipe",
            )
            return
        found = limits.stat_or_why(target)
        if isinstance(found, str):
            problem(path, f"'{relative}' {found} (looked for {target})")
            return
        if stat.S_ISREG(found.st_mode):
            return
        if kinds == "file" or not stat.S_ISDIR(found.st_mode):
            allowed = "a regular file" if kinds == "file" else "a regular file or a folder"
            kind = limits.kind_of(found.st_mode)
            problem(path, f"'{relative}' is {kind}; {what} takes {allowed}")
            return
        tree_problem(path, target, relative)

    def tree_problem(path: KeyPath, target: Path, relative: str) -> None:
        try:
            bad, seen = limits.special_entries(target)
        except OSError as exc:
            problem(path, f"'{relative}': {exc.filename or target} {limits.os_reason(exc)}")
            return
        if seen > limits.MAX_TREE_ENTRIES:
            problem(
                path,
                f"'{relative}' holds more than {limits.MAX_TREE_ENTRIES} entries; "
                "a bake reads every one of them",
            )
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            problem(
                path,
                f"'{relative}' holds {shown}: only regular files, folders and symlinks "
                "can be read by a bake (a FIFO or a device would hang it)",
            )

    steps = raw.get("steps")
    for number, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        for item, relative in step_inputs(step):
            where: KeyPath = ("steps", number, item.key)
            if item.kind != "folder":
                check_input(where, relative, item.key, item.kind)
            elif isinstance(relative, str) and relative and "\0" not in relative:
                # the bake reads the whole folder (a playbook's templates, files, roles)
                folder_read = item.locate(folder, relative)
                if inside(folder_read, folder) and folder_read.is_dir():
                    tree_problem(where, folder_read, str(Path(relative).parent))

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
    if isinstance(parent, str) and "\0" not in parent:
        if is_recipe_path(parent):
            found = limits.stat_or_why(_real(folder / parent))
            if isinstance(found, str) or not stat.S_ISREG(found.st_mode):
                why = found if isinstance(found, str) else f"is {limits.kind_of(found.st_mode)}"
                problem(("image", "parent"), f"parent recipe '{parent}' {why}")
        elif (not_ref := refs.problem(parent)) is not None:
            problem(
                ("image", "parent"),
                f"{not_ref}; a parent is a recipe path (*.toml) or an image ref "
                "(name, name:version, name:channel or name@sha256:...)",
            )
    imported = image.get("import")
    if isinstance(imported, str) and imported and "\0" not in imported:
        target = _real(folder / imported)
        found = limits.stat_or_why(target)
        if isinstance(found, str):
            problem(("image", "import"), f"'{imported}' {found} (looked for {target})")
        elif not stat.S_ISREG(found.st_mode):
            problem(
                ("image", "import"),
                f"'{imported}' is {limits.kind_of(found.st_mode)}; import takes a regular file "
                "(a root filesystem tarball or an OCI archive)",
            )
    return problems


def _capped(problems: list[Problem], file: str) -> list[Problem]:
    if len(problems) <= limits.MAX_PROBLEMS:
        return problems
    rest = len(problems) - limits.MAX_PROBLEMS
    return [*problems[: limits.MAX_PROBLEMS], Problem(file, None, "", f"... and {rest} more")]


def load_recipe(path: Path) -> RecipeFile:
    """Load and validate one recipe; raise RecipeError listing every problem."""
    given = Path(os.path.abspath(path))
    path = _real(path)
    file = str(path)
    try:
        data = limits.read_regular(given, limits.MAX_RECIPE_BYTES, "recipe")
    except NotFound:
        raise NotFound(f"no recipe at {path}", hint="give the path of a .toml recipe") from None
    text, raw = parse_toml(file, data)

    index = LineIndex(text)
    problems: list[Problem] = []
    flagged: set[KeyPath] = set()
    fatal = False
    for key_path, message, stop in limits.value_problems(raw):
        fatal = fatal or stop
        flagged.add(key_path)
        problems.append(Problem(file, index.line_of(key_path), format_path(key_path), message))
    problems += _raw_problems(file, path.parent, index, raw)
    problems += _lock_problems(path)
    if not fatal:
        try:
            Recipe.model_validate(raw)
        except ValidationError as exc:
            flagged_text = {format_path(p) for p in flagged}
            problems = [
                p for p in pydantic_problems(file, index, exc) if p.path not in flagged_text
            ] + problems
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise RecipeError(_capped(problems, file), hint="see docs/recipes.md for every key")
    recipe = Recipe.model_validate(raw)
    return RecipeFile(
        path=path, recipe=recipe, digest=hashlib.sha256(data).hexdigest(), lines=index
    )


def _lock_problems(recipe: Path) -> list[Problem]:
    """A lock file beside the recipe must be a regular file of bounded size (its lines are
    checked when a bake reads it)."""
    lock = recipe.with_name(recipe.name + ".lock")
    if not os.path.lexists(lock):
        return []
    found = limits.stat_or_why(lock)
    if isinstance(found, str):
        message = f"the lock file {found}"
    elif not stat.S_ISREG(found.st_mode):
        message = f"is {limits.kind_of(found.st_mode)}, not a regular file"
    elif found.st_size > limits.MAX_LOCK_BYTES:
        message = f"is {found.st_size} bytes; a lock file may be at most {limits.MAX_LOCK_BYTES}"
    else:
        return []
    return [Problem(str(lock), None, "", message)]


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
