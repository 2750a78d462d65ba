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
        "data": [recipe.data.name, thaw(recipe.data.options), recipe.id_field],
        "prompt": [list(m) for m in recipe.messages],
        "provider": [recipe.provider.name, thaw(recipe.provider.options)],
        "generation": thaw(recipe.generation),
    }
    text = json.dumps(_hide(relevant, recipe.secrets), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hide(value: Any, secrets: frozenset[str]) -> Any:
    """Secrets (a key in a header, say) do not go into the hash, like ``job_hash``."""
    if isinstance(value, dict):
        return {k: _hide(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, secrets) for v in value]
    return "<secret>" if isinstance(value, str) and value in secrets else value
