"""llmrun-ray: run an llmrun recipe on a Ray cluster with one rate limit, one key pool and one
budget for the whole cluster.

- ``run.engine: ray`` in a recipe, or ``llmrun run RECIPE --engine ray [--address auto]
  [--workers N]`` (the same as ``llmrun-ray run RECIPE``): the records spread over Ray workers
  by id hash and merged into the recipe's single output;
- ``llmrun_ray.processor(recipe)``: the recipe as a ``ray.data.Dataset.map_batches`` function.

Ray is imported only when one of them is used, so ``llmrun plugins`` stays fast. Ray's usage
statistics are switched off before it loads (nothing leaves the machine on llmrun's account).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmrun import hookimpl

if TYPE_CHECKING:
    from .processor import Processor

__version__ = "0.1.0"
__all__ = ["Processor", "RayEngine", "__version__", "processor"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class RayEngine:
    """``run.engine: ray``: the recipe's records over the workers of a Ray cluster (the one
    ``address`` names, else one started on this machine), ``run.workers`` of them (default: one
    per CPU the cluster offers)."""

    runs_steps = True  # a steps: record goes through its steps on one worker

    @classmethod
    def build(
        cls,
        recipe: Any,
        registry: Any,
        progress: Any,
        *,
        address: str | None = None,
        overrides: Sequence[str] = (),
        **options: Any,
    ) -> Any:
        from .driver import init_ray, ray_engine

        init_ray(address)
        engine, _ = ray_engine(
            recipe, registry, progress, overrides=overrides, workers=recipe.run.workers, **options
        )
        return engine


@hookimpl
def register_engines(register: Any) -> None:
    register("ray", RayEngine)


def processor(recipe: str, overrides: Any = ()) -> Processor:
    """The recipe as a Ray Data ``map_batches`` function (see ``llmrun_ray.processor``)."""
    from .processor import processor as make

    return make(recipe, overrides)


def __getattr__(name: str) -> Any:
    if name == "Processor":
        from .processor import Processor

        return Processor
    raise AttributeError(f"module 'llmrun_ray' has no attribute {name!r}")
