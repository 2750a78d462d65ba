"""The output, always through its writer plugin: where finished rows go (the writer, the run's
counts and the observers, in one step), how commands read them back, and how the commands that
rewrite it in place do so.

Every mode writes through one ``RowSink`` (direct mode from its writer task, batch mode when it
merges a batch's results), so a row is always counted and shown to observers exactly when it
reaches the output. ``read_rows`` is the one reader (``status``, ``plan``) and
``rewrite_output`` the one rewriter (``--retry-errors``, ``repost``): JSONL, the parquet folder
and any writer with ``read`` / ``rewrite`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from ..components import RewritableWriter, RowEdit, Writer
from ..errors import RecipeError
from ..plugins import Observers, Registry, build_component
from ..recipe.model import Recipe
from ..values import ComponentContext, Row
from .stats import RunStats
from .store import RunState


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


def rewriter(writer: Writer, name: str) -> RewritableWriter:
    """The writer ``--retry-errors`` and ``repost`` rewrite the output through; RecipeError,
    before anything changes, for a writer that cannot (it has no ``rewrite``)."""
    if not callable(getattr(writer, "rewrite", None)):
        raise RecipeError(
            f"the {name!r} writer cannot rewrite its output in place: it has no rewrite() "
            "method, which `llmrun run --retry-errors` and `llmrun repost` need; nothing was "
            "changed"
        )
    return cast(RewritableWriter, writer)


def rewrite_output(
    writer: RewritableWriter, state: RunState, edit: RowEdit, kind: str
) -> Path | None:
    """Rewrite the output through its writer, each row as ``edit`` returns it; the caller
    holds ``state``'s lock. Where the old output is kept (``RunState.kept(kind)``), or None
    when ``edit`` changed no row (then nothing was replaced or kept)."""
    keep = state.kept(kind)
    return keep if writer.rewrite(edit, keep) else None
