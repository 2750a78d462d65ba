"""What decides the replies themselves (not their postprocessing), as one short hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .model import Recipe, thaw


def call_hash(recipe: Recipe) -> str:
    """Hash of the data source, the id field, the prompt, the provider (never its keys) and the
    generation settings: what a stored reply depends on. ``postprocess`` is left out, so
    ``llmrun repost`` can tell a changed chain (fine) from changed calls (the stored replies
    answer another recipe)."""
    relevant = {
        "data": [recipe.data.name, _data_options(recipe), recipe.id_field],
        "prompt": [list(m) for m in recipe.messages],
        "provider": [recipe.provider.name, thaw(recipe.provider.options)],
        "generation": thaw(recipe.generation),
    }
    if recipe.steps:  # each step's calls; their postprocessors are left out like the recipe's
        relevant["steps"] = [
            [
                step.name,
                [list(m) for m in step.messages],
                thaw(step.generation),
                thaw(step.provider_options),
                step.when,
                step.n,
                list(step.select),
            ]
            for step in recipe.steps
        ]
    text = json.dumps(_hide(relevant, recipe.secrets), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data_options(recipe: Recipe) -> Any:
    """The data options with ``path`` made absolute: the same file written relative or
    absolute (or through ``..``) is the same source."""
    options = thaw(recipe.data.options)
    path = options.get("path")
    if isinstance(path, str) and path != "-":
        options["path"] = str((recipe.base_dir / path).resolve())
    return options


def _hide(value: Any, secrets: frozenset[str]) -> Any:
    """Secrets (a key in a header, say) do not go into the hash, like ``job_hash``."""
    if isinstance(value, dict):
        return {k: _hide(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, secrets) for v in value]
    return "<secret>" if isinstance(value, str) and value in secrets else value
