"""A provider's own key variable: the key read from the environment when a recipe gives no
``provider.api_keys`` (``OPENAI_API_KEY``, a preset's ``DEEPSEEK_API_KEY``, ...).

A provider class may declare ``api_key_env(options) -> (VARIABLE, required) | None``. The value
found joins the recipe's secrets, so it is redacted like any other key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import Problem, RecipeError
from ..plugins import Registry
from .envvars import Environment

if TYPE_CHECKING:
    from .model import Recipe


def default_key(
    recipe: Recipe,
    registry: Registry,
    env: Environment,
    where: tuple[str, int | None, int | None],
) -> tuple[Recipe, str]:
    """The recipe with its provider's key from the environment and the variable it came
    from, the recipe unchanged when the provider names no variable (or an optional one that
    is unset); a RecipeError naming the variable when a required one is unset. ``where`` is
    (file, line, column) of ``provider.name``."""
    cls = registry.get("provider", recipe.provider.name).cls
    declared = getattr(cls, "api_key_env", None)
    found = declared(recipe.provider.options) if callable(declared) else None
    if not found:
        return recipe, ""
    name, required = found
    value = env.get(name)
    if value:
        return replace(recipe, api_keys=(value,), secrets=recipe.secrets | {value}), name
    if not required:
        return recipe, ""
    preset = recipe.provider.options.get("preset")
    who = f"provider {recipe.provider.name!r}" + (f" (preset {preset})" if preset else "")
    file, line, column = where
    message = (
        f"environment variable {name} is not set: {who} reads its key from it when "
        f"provider.api_keys is not given (set it, add {name}=... to "
        f"{recipe.base_dir / '.env'}, or give provider.api_keys)"
    )
    raise RecipeError([Problem(message, "provider.api_keys", file, line, column)])
