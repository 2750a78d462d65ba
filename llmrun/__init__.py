"""llmrun: run large, repeatable jobs of LLM calls from a shared YAML recipe.

Names are imported on first use, so ``import llmrun`` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from .hookspecs import PLUGIN_API, hookimpl

_WHERE = {
    "CallError": "errors",
    "ComponentContext": "values",
    "InputError": "errors",
    "LlmrunError": "errors",
    "LockedError": "errors",
    "PluginError": "errors",
    "PostprocessError": "errors",
    "Problem": "errors",
    "Prompt": "values",
    "Recipe": "recipe.model",
    "RecipeError": "errors",
    "RecordError": "errors",
    "Reply": "values",
    "Result": "values",
    "Row": "values",
    "RunEnd": "values",
    "RunStart": "values",
    "RunAborted": "errors",
    "RunSummary": "job.summary",
    "SourceRecord": "values",
    "TemplateError": "errors",
    "Usage": "values",
    "load_recipe": "recipe.load",
    "open_recipe": "api",
    "run_recipe": "api",
    "run_recipe_sync": "api",
}

# Plain sorted order (tests/test_docs.py), not ruff's constants-first order.
__all__ = [  # noqa: RUF022
    "CallError",
    "ComponentContext",
    "InputError",
    "LlmrunError",
    "LockedError",
    "PLUGIN_API",
    "PluginError",
    "PostprocessError",
    "Problem",
    "Prompt",
    "Recipe",
    "RecipeError",
    "RecordError",
    "Reply",
    "Result",
    "Row",
    "RunAborted",
    "RunEnd",
    "RunStart",
    "RunSummary",
    "SourceRecord",
    "TemplateError",
    "Usage",
    "__version__",
    "hookimpl",
    "load_recipe",
    "open_recipe",
    "run_recipe",
    "run_recipe_sync",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'llmrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .api import open_recipe, run_recipe, run_recipe_sync
    from .errors import (
        CallError,
        InputError,
        LlmrunError,
        LockedError,
        PluginError,
        PostprocessError,
        Problem,
        RecipeError,
        RecordError,
        RunAborted,
        TemplateError,
    )
    from .job.summary import RunSummary
    from .recipe.load import load_recipe
    from .recipe.model import Recipe
    from .values import (
        ComponentContext,
        Prompt,
        Reply,
        Result,
        Row,
        RunEnd,
        RunStart,
        SourceRecord,
        Usage,
    )
