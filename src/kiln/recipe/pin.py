"""Moving a recipe's parent pin (``parent = "base:3"``) by editing its text: only the
parent's value on its line changes, so the comments and layout a person wrote stay."""

from __future__ import annotations

import tomllib
from pathlib import Path

from kiln.atomic import write_atomic
from kiln.recipe.limits import MAX_RECIPE_BYTES, read_regular


def moved_pin(text: str, line: int | None, pin: str, new: str) -> str | None:
    """A recipe's text with its parent pin (``parent = "base:3"`` on ``line``) moved to
    ``new``, and nothing else changed; None when the pin is not one plain string on that
    line or the edit would change anything else (then a person moves it)."""
    lines = text.splitlines(keepends=True)
    index = (line or 0) - 1
    if not 0 <= index < len(lines):
        return None
    quote = next((q for q in (f'"{pin}"', f"'{pin}'") if lines[index].count(q) == 1), None)
    if quote is None:
        return None
    lines[index] = lines[index].replace(quote, quote[0] + new + quote[0])
    changed = "".join(lines)
    try:
        before, after = tomllib.loads(text), tomllib.loads(changed)
    except tomllib.TOMLDecodeError:
        return None
    image = after.get("image")
    if not isinstance(image, dict) or image.get("parent") != new:
        return None
    image["parent"] = pin
    return changed if after == before else None


def move_pin(path: Path, line: int | None, pin: str, new: str) -> bool:
    """Rewrite the recipe at ``path`` (atomically) with its parent pin on ``line`` moved
    to ``new``; False, and the file untouched, when that value cannot be changed alone."""
    try:
        text = read_regular(path, MAX_RECIPE_BYTES, "recipe").decode()
    except UnicodeDecodeError:
        text = ""
    changed = moved_pin(text, line, pin, new)
    if changed is None:
        return False
    write_atomic(path, changed.encode())
    return True
