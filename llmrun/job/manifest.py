"""The manifest beside the output (``<output>.llmrun/manifest.json``): what the output was made
with, its counts, and each run's start, end and status (docs/output.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

from ..__about__ import __version__
from ..plugins import Registry
from ..recipe.model import Recipe
from ..recipe.provenance import call_hash
from .stats import RunStats
from .store import RunState, now_iso

KEEP_RUNS = 50


class RunEntry(TypedDict, total=False):
    """One run in the manifest's ``runs`` (docs/output.md)."""

    started_at: str
    status: str  # running, completed, interrupted, aborted, budget
    finished_at: str
    written: int
    tokens: dict[str, int]
    reason: str
    endpoints: dict[str, Any]  # per endpoint of provider.base_urls: answered and failed


class Manifest(TypedDict, total=False):
    """The manifest a run writes (docs/output.md). One read back from disk is plain JSON,
    checked where it is read (``status``, ``report``, ``repost``): it may be any shape."""

    llmrun_version: str
    recipe: str
    name: str
    recipe_hash: str
    call_hash: str
    provider: str
    model: str | None
    output: str
    plugins: list[dict[str, str]]
    created_at: str
    runs: list[RunEntry]
    counts: dict[str, int | None]
    batch: dict[str, Any]  # batch mode's parts while it waits
    updated_at: str


def start_manifest(
    recipe: Recipe,
    registry: Registry,
    state: RunState,
    stats: RunStats,
    model: str | None,
    warn: Callable[[str], None],
) -> Manifest:
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
    kept = old.get("runs")
    # Earlier runs as the file has them (kept, not checked: only this run's entry is ours).
    runs: list[RunEntry] = kept[-(KEEP_RUNS - 1) :] if isinstance(kept, list) else []
    created = old.get("created_at")
    manifest: Manifest = {
        "llmrun_version": __version__,
        "recipe": str(recipe.path),
        "name": recipe.name,
        "recipe_hash": recipe.job_hash,
        "call_hash": call_hash(recipe),  # lets `repost` see changed calls
        "provider": recipe.provider.name,
        "model": model,
        "output": str(recipe.output_path),
        "plugins": [{"package": p, "version": v} for p, v in plugins],
        "created_at": created if isinstance(created, str) and created else now_iso(),
        "runs": [*runs, {"started_at": now_iso(), "status": "running"}],
    }
    update_manifest(state, stats, manifest)
    return manifest


def update_manifest(state: RunState, stats: RunStats, manifest: Manifest) -> None:
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
    state: RunState, stats: RunStats, manifest: Manifest, status: str, reason: str | None
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
