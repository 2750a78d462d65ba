"""What ``llmrun run`` checks before it starts anything, so that a fault in the recipe ends at
once with exit 2, as ``validate`` would, rather than after the progress display has started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import Problem, RecipeError
from ..plugins import Registry
from ..recipe.model import Recipe


def check_before_run(recipe: Recipe, registry: Registry, engine: Any) -> None:
    """RecipeError for a data file that is not there and for batch mode with a provider that
    has no batch API."""
    problems: list[Problem] = []
    # A loader reading one named file keeps its resolved path (None for stdin): a file that
    # is not there is the recipe's fault. Other loaders (a dataset hub, a database) are left
    # to fail on their own terms.
    path = getattr(engine.loader, "path", None)
    if isinstance(path, Path) and not path.exists():
        problems.append(
            Problem(f"cannot read the data: no file {path}", "data.path", str(recipe.path))
        )
    if recipe.run.mode == "batch":
        from ..batch.contract import batch_api_of

        if batch_api_of(engine.provider) is None:
            problems.append(
                Problem(
                    f"provider {recipe.provider.name!r} has no batch API; providers with one: "
                    f"{', '.join(batch_providers(registry)) or 'none installed'} "
                    "(or use run.mode: direct or auto)",
                    "run.mode",
                    str(recipe.path),
                )
            )
    if problems:
        raise RecipeError(problems)


def batch_providers(registry: Registry) -> list[str]:
    """The installed providers that have a batch API (a ``batch_api`` method not switched off
    by ``has_batch_api = False``, as the mock and Azure do)."""
    return [
        c.name
        for c in registry.all()
        if c.kind == "provider"
        and callable(getattr(c.cls, "batch_api", None))
        and getattr(c.cls, "has_batch_api", True)
    ]
