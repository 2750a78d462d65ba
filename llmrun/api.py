"""The Python API: what the CLI calls, for programs that drive llmrun themselves."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .access import Access
from .plugins import Registry, load_registry
from .recipe.load import load_recipe
from .recipe.model import Recipe

if TYPE_CHECKING:  # the engine (and the HTTP stack) load only when a run starts
    from rich.console import Console

    from .eventloop import Loop
    from .job.summary import RunSummary
    from .run.backends import Backends
    from .run.engine import Engine
    from .run.progress import Mode, Progress


def open_recipe(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    access: Access | None = None,
) -> tuple[Recipe, Registry]:
    """Load and validate a recipe with the installed plugins. ``access`` is what the user
    allows the recipe beyond its folder (``Access.from_user``; default: nothing)."""
    registry = registry or load_registry()
    recipe = load_recipe(path, registry, overrides=overrides, environ=environ, access=access)
    return recipe, registry


def open_recipe_offline(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    access: Access | None = None,
) -> tuple[Recipe, Registry]:
    """A recipe for a command that calls nothing (``export``, ``status``, ``repost``): keys
    are not read, so an unset ``OPENAI_API_KEY`` (or any unset ``${VAR}``) does not stop it.
    The keys become a placeholder: such a command never sends one."""
    import os

    from .job.planning import missing_env

    unset = missing_env(Path(path), os.environ, overrides)
    environ = {**os.environ, **{name: f"<{name} unset>" for name in unset}}
    no_keys = [*overrides, 'provider.api_keys=["<not read>"]']
    return open_recipe(path, overrides=no_keys, registry=registry, environ=environ, access=access)


async def run_recipe(
    recipe: str | Path | Recipe,
    *,
    overrides: Sequence[str] = (),
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    progress: Mode = "none",
    console: Console | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    handle_signals: bool = False,
    access: Access | None = None,
) -> RunSummary:
    """Run a recipe to the end and return how it ended.

    A run-level failure (every key rejected, unknown model, unreachable endpoint) does not
    raise: the summary's ``status`` is "aborted" and ``reason`` says why. A bad recipe raises
    RecipeError; a busy output raises LockedError. ``retry_errors`` calls the records of the
    output's error rows again (as ``llmrun run --retry-errors``).
    """
    from .run.progress import make_progress

    if isinstance(recipe, Recipe):
        registry = registry or load_registry()
    else:
        recipe, registry = open_recipe(
            recipe, overrides=overrides, registry=registry, environ=environ, access=access
        )
    engine = make_engine(
        recipe,
        registry,
        make_progress(progress, console),
        limit=limit,
        fresh=fresh,
        retry_errors=retry_errors,
        handle_signals=handle_signals,
    )
    return await engine.run()


def make_engine(
    recipe: Recipe,
    registry: Registry,
    progress: Progress,
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    handle_signals: bool = True,
    backends: Backends | None = None,
) -> Engine:
    """The engine for a recipe, with every mode wired in (direct, batch, auto).
    ``backends`` replaces the in-process key pool, budget or stages (``run.backends``):
    how a distribution such as llmrun-ray shares limits across processes."""
    from .batch.runner import run_batches
    from .run.engine import Engine

    return Engine(
        recipe,
        registry,
        progress,
        limit=limit,
        fresh=fresh,
        retry_errors=retry_errors,
        handle_signals=handle_signals,
        batch_phase=run_batches,
        backends=backends,
    )


def run_recipe_sync(
    recipe: str | Path | Recipe,
    *,
    backend: Loop = "auto",
    **kwargs: object,
) -> RunSummary:
    """``run_recipe`` for callers without an event loop, on the loop ``backend`` names
    (``llmrun.eventloop``: uvloop where installed, by default)."""
    from .eventloop import run_sync

    return run_sync(
        functools.partial(run_recipe, recipe, **kwargs),  # type: ignore[arg-type]
        backend,
    )
