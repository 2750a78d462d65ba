"""Recipes: YAML -> a validated, frozen Recipe; templates, selection, prices and tokens."""
