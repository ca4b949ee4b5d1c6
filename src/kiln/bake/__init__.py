"""Baking: recipe -> plan (lineage, cache keys) -> build root -> layer -> store + catalog."""
