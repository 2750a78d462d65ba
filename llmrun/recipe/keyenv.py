"""A provider's own key variable: the key read from the environment when a recipe gives no
``provider.api_keys`` (``OPENAI_API_KEY``, a preset's ``DEEPSEEK_API_KEY``, ...).

A provider class may declare ``api_key_env(options) -> (VARIABLE, required) | None``. The value
found joins the recipe's secrets, so it is redacted like any other key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
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


def check_keys(recipe: Recipe) -> None:
    """Keys travel in HTTP headers, which take printable ASCII only: a key with another
    character (a pasted non-breaking space, a typographic quote) is the recipe's fault, told
    before anything is sent. The message names the key's place, never the key."""
    places = [(f"provider.api_keys[{i}]", key) for i, key in enumerate(recipe.api_keys)]
    places += [
        (f"provider.endpoints[{i}].api_keys[{j}]", key)
        for i, pooled in enumerate(recipe.endpoints)
        for j, key in enumerate(pooled.api_keys)
    ]
    problems = [
        Problem(
            "the key has a character an HTTP header cannot carry (only printable ASCII); "
            "check it for a stray space or quote",
            place,
            str(recipe.path),
        )
        for place, key in places
        if not all(" " <= ch <= "~" for ch in key)
    ]
    if problems:
        raise RecipeError(problems)


def env_options(recipe: Recipe, registry: Registry, env: Environment) -> Recipe:
    """Provider options the environment gives when the recipe does not, as an official client
    reads them (``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``): a provider
    class declares ``options_from_env = {option: VARIABLE}``. The recipe's own value wins; a
    preset sets its own base URL, so the variables do not apply to it."""
    cls = registry.get("provider", recipe.provider.name).cls
    declared: Mapping[str, str] = getattr(cls, "options_from_env", None) or {}
    options = recipe.provider.options
    if not declared or options.get("preset"):
        return recipe
    found = {
        option: value
        for option, name in declared.items()
        if option not in options and (value := env.get(name))
    }
    if not found:
        return recipe
    problems = [
        Problem(
            f"environment variable {declared[option]} is {value!r}, not an http(s):// URL",
            "provider.base_url",
            str(recipe.path),
        )
        for option, value in found.items()
        if option == "base_url" and not value.startswith(("http://", "https://"))
    ]
    if problems:
        raise RecipeError(problems)
    provider = replace(recipe.provider, options=MappingProxyType({**options, **found}))
    return replace(recipe, provider=provider)
