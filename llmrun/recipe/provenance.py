"""What decides a job's results (``job_hash``) and the replies themselves, not their
postprocessing (``call_hash``), each as one short hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .model import Recipe, thaw

# Provider options that decide no result: the keys, and which replica answers.
NOT_HASHED = ("api_keys", "base_urls", "endpoints")


def job_hash(data: Mapping[str, Any], secrets: Iterable[str]) -> str:
    """Hash what decides the results: data, prompt, provider (keys excluded), generation,
    postprocessing. Run settings and the output's own options are left out, so raising the
    concurrency does not count as a changed recipe."""
    secret_set = frozenset(secrets)
    keys = ("data", "prompt", "steps", "provider", "generation", "postprocess")
    relevant = {k: data.get(k) for k in keys if k in data or k != "steps"}
    relevant["provider"] = {
        # Which replica answers does not decide the results.
        k: v
        for k, v in (relevant["provider"] or {}).items()
        if k not in NOT_HASHED
    }
    # How many records to take decides no record's result, like --limit; nor does which part
    # (offset, shard) or which sample of them. `filter` stays: it defines the job's population.
    portion = ("limit", "offset", "shard", "sample", "seed")
    relevant["data"] = {k: v for k, v in (relevant["data"] or {}).items() if k not in portion}
    text = json.dumps(hide_secrets(relevant, secret_set), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    text = json.dumps(hide_secrets(relevant, recipe.secrets), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data_options(recipe: Recipe) -> Any:
    """The data options with ``path`` made absolute: the same file written relative or
    absolute (or through ``..``) is the same source."""
    options = thaw(recipe.data.options)
    path = options.get("path")
    if isinstance(path, str) and path != "-":
        options["path"] = str((recipe.base_dir / path).resolve())
    return options


def hide_secrets(value: Any, secrets: frozenset[str]) -> Any:
    """Secrets (a key in a header, say) do not go into the hash, like ``job_hash``."""
    if isinstance(value, dict):
        return {k: hide_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_secrets(v, secrets) for v in value]
    return "<secret>" if isinstance(value, str) and value in secrets else value
