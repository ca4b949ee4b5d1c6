"""Recipes: validated, frozen models loaded from TOML with file:line errors.

The names below load on first use, so a command that needs only ``kiln.recipe.limits``
(``kiln run`` reading a config file, on the clock) does not import pydantic and the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.recipe.load import RecipeFile, load_recipe, load_recipes
    from kiln.recipe.models import Recipe, Step
    from kiln.steps.ansible import AnsibleStep
    from kiln.steps.copy import CopyStep
    from kiln.steps.run import RunStep

_WHERE = {
    "RecipeFile": "kiln.recipe.load",
    "load_recipe": "kiln.recipe.load",
    "load_recipes": "kiln.recipe.load",
    "AnsibleStep": "kiln.steps.ansible",
    "CopyStep": "kiln.steps.copy",
    "Recipe": "kiln.recipe.models",
    "RunStep": "kiln.steps.run",
    "Step": "kiln.recipe.models",
}

__all__ = [
    "AnsibleStep",
    "CopyStep",
    "Recipe",
    "RecipeFile",
    "RunStep",
    "Step",
    "load_recipe",
    "load_recipes",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.recipe' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
