"""llmrun-ray: run an llmrun recipe on a Ray cluster with one rate limit, one key pool and one
budget for the whole cluster.

- ``llmrun-ray run RECIPE [--address auto] [--workers N]``: ``llmrun run`` with the records
  spread over Ray workers by id hash and merged into the recipe's single output;
- ``llmrun_ray.processor(recipe)``: the recipe as a ``ray.data.Dataset.map_batches`` function.

Ray is imported only when one of them is used, so ``llmrun plugins`` stays fast. Ray's usage
statistics are switched off before it loads (nothing leaves the machine on llmrun's account).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .processor import Processor

__version__ = "0.1.0"
__all__ = ["Processor", "__version__", "processor"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def processor(recipe: str, overrides: Any = ()) -> Processor:
    """The recipe as a Ray Data ``map_batches`` function (see ``llmrun_ray.processor``)."""
    from .processor import processor as make

    return make(recipe, overrides)


def __getattr__(name: str) -> Any:
    if name == "Processor":
        from .processor import Processor

        return Processor
    raise AttributeError(f"module 'llmrun_ray' has no attribute {name!r}")
