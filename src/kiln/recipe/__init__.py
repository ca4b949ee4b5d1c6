"""Recipes: validated, frozen models loaded from TOML with file:line errors."""

from kiln.recipe.load import RecipeFile, load_recipe, load_recipes
from kiln.recipe.models import AnsibleStep, CopyStep, Recipe, RunStep, Step

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
