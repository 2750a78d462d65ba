"""The manifest beside the output (``<output>.llmrun/manifest.json``): what the output was made
with, its counts, and each run's start, end and status (docs/output.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..__about__ import __version__
from ..plugins import Registry
from ..recipe.model import Recipe
from ..recipe.provenance import call_hash
from .stats import RunStats
from .store import RunState, now_iso

KEEP_RUNS = 50


def start_manifest(
    recipe: Recipe,
    registry: Registry,
    state: RunState,
    stats: RunStats,
    model: str | None,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """The manifest for a run starting now (written at once); warns when the recipe changed
    since the output was started."""
    old = state.read_manifest() or {}
    if (
        old
        and old.get("recipe_hash") != recipe.job_hash
        and (stats.resumed_ok or stats.resumed_error)
    ):
        warn(
            f"the recipe changed since {recipe.output_path.name} was started "
            f"(hash {old.get('recipe_hash')} -> {recipe.job_hash}): new rows follow "
            "the new recipe, old rows stay; use --fresh to start over"
        )
    plugins = sorted({(c.package, c.version) for c in registry.all()})
    runs = old.get("runs", [])[-(KEEP_RUNS - 1) :]
    manifest: dict[str, Any] = {
        "llmrun_version": __version__,
        "recipe": str(recipe.path),
        "name": recipe.name,
        "recipe_hash": recipe.job_hash,
        "call_hash": call_hash(recipe),  # lets `repost` see changed calls
        "provider": recipe.provider.name,
        "model": model,
        "output": str(recipe.output_path),
        "plugins": [{"package": p, "version": v} for p, v in plugins],
        "created_at": old.get("created_at") or now_iso(),
        "runs": [*runs, {"started_at": now_iso(), "status": "running"}],
    }
    update_manifest(state, stats, manifest)
    return manifest


def update_manifest(state: RunState, stats: RunStats, manifest: dict[str, Any]) -> None:
    manifest["counts"] = {
        "ok": stats.ok + stats.resumed_ok,
        "error": stats.error + stats.resumed_error,
        "total": stats.total,
    }
    if stats.endpoints:
        manifest["runs"][-1]["endpoints"] = stats.endpoint_counts()
    if stats.batch is not None:  # `llmrun status` shows it while the run waits
        manifest["batch"] = stats.batch.to_json()
    manifest["updated_at"] = now_iso()
    state.write_manifest(manifest)


def finish_manifest(
    state: RunState, stats: RunStats, manifest: dict[str, Any], status: str, reason: str | None
) -> None:
    run = manifest["runs"][-1]
    run.update(
        {
            "finished_at": now_iso(),
            "status": status,
            "written": stats.written,
            "tokens": {"input": stats.input_tokens, "output": stats.output_tokens},
        }
    )
    if reason:
        run["reason"] = reason
    update_manifest(state, stats, manifest)
