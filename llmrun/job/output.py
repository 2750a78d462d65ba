"""Where finished rows go: the writer plugin, the run's counts and the observers, in one step.

Every mode writes through one ``RowSink`` (direct mode from its writer task, batch mode when it
merges a batch's results), so a row is always counted and shown to observers exactly when it
reaches the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..components import Writer
from ..errors import RecipeError
from ..plugins import Observers, Registry, build_component
from ..recipe.model import Recipe
from ..values import ComponentContext, Row
from .stats import RunStats


class RowSink:
    def __init__(
        self,
        writer: Writer,
        stats: RunStats,
        observers: Observers,
        also: Callable[[Row], None] | None = None,
    ) -> None:
        self.writer = writer
        self.stats = stats
        self.observers = observers
        self.also = also  # one more look at each row written (the run log)

    def write(self, rows: Sequence[Row], *, durable: bool = False) -> None:
        """Append rows (handed to the OS); ``durable`` also fsyncs them, for a caller that
        records elsewhere that they are written (the batch journal)."""
        self.writer.write(rows)
        if durable:
            self.writer.sync()
        wants_rows = self.observers.wants_records
        also = self.also
        for row in rows:
            self.stats.count_row(row)
            if also is not None:
                also(row)
            if wants_rows:
                self.observers.call("record_done", row=row)

    def sync(self) -> None:
        self.writer.sync()


def read_rows(recipe: Recipe, registry: Registry) -> Iterator[Mapping[str, Any]]:
    """The rows already in the recipe's output, read-only, through its writer plugin (JSONL, the
    parquet folder, any writer with ``read``): what ``status`` and ``plan`` count. RecipeError
    when the writer cannot read its output back."""
    context = ComponentContext(recipe.base_dir, recipe.name, access=recipe.access)
    writer = build_component(registry, "writer", recipe.writer, context)
    read = getattr(writer, "read", None)
    if read is None:
        raise RecipeError(
            f"the {recipe.writer.name!r} writer cannot read its output back (it has no read()); "
            "only `llmrun run` can resume it"
        )
    rows: Iterator[Mapping[str, Any]] = read()
    return rows


def rewritable(recipe: Recipe) -> None:
    """Commands that rewrite the output in place (``--retry-errors``, ``repost``) work on the
    JSONL output, the source of truth: RecipeError for any other writer, before anything
    changes."""
    if recipe.writer.name != "jsonl":
        raise RecipeError(
            f"this rewrites the output in place, which only the jsonl writer's output allows; "
            f"this recipe writes with {recipe.writer.name!r} (write jsonl and `llmrun export` "
            "to other formats)"
        )
