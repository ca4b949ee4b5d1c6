"""A recipe file read as bounded bytes and TOML alone, without the models.

``load_recipe`` reads every recipe this way before it validates it; a caller that needs
one value of a recipe on the clock (the parent ``kiln propagate --dry-run`` plans with)
reads it here too, without importing pydantic, and gets None where ``load_recipe`` would
refuse the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, Problem, RecipeError
from kiln.recipe import limits


def parse_toml(file: str, data: bytes) -> tuple[str, dict[str, Any]]:
    """A recipe's (or policy file's) text and TOML table; a RecipeError with its line."""

    def fail(line: int | None, message: str) -> RecipeError:
        return RecipeError([Problem(file, line, "", message)])

    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise fail(
            data.count(b"\n", 0, exc.start) + 1,
            f"not UTF-8 text (byte {exc.start}): is this a recipe?",
        ) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise fail(line, f"TOML syntax: {message}") from None
    except RecursionError:
        raise fail(
            None, f"TOML nested too deeply to parse (at most {limits.MAX_DEPTH} levels)"
        ) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise fail(None, f"TOML value out of range: {exc}") from None


def recipe_bytes(path: Path | str) -> bytes | None:
    """A recipe's bytes as ``load_recipe`` reads them (a regular file of at most a
    recipe's size, checked before it is opened: no FIFO waited on, no device read);
    None when it would refuse them or the file is gone."""
    try:
        return limits.read_regular(Path(path), limits.MAX_RECIPE_BYTES, "recipe")
    except KilnError:
        return None


def named_parent(path: Path | str, data: bytes) -> str | None:
    """The ``parent`` a recipe's bytes name; None when they do not read as TOML or name
    none (the recipe's bake reports why)."""
    try:
        _text, raw = parse_toml(str(path), data)
    except RecipeError:
        return None
    image = raw.get("image")
    parent = image.get("parent") if isinstance(image, dict) else None
    return parent if isinstance(parent, str) else None
