"""``llmrun_ray.processor(recipe)``: a recipe's prompt, provider, limits and post-processing as a
Ray Data batch function.

    import ray, llmrun_ray
    ds = ray.data.read_json("reviews.jsonl")
    out = ds.map_batches(llmrun_ray.processor("recipe.yaml"), batch_size=64)

Each batch (columns -> values, Ray Data's default ``numpy`` or ``pandas`` format, or a list of
records) becomes one output row per record, in order, with the columns of llmrun's output row:
``id``, ``status``, ``text``, ``fields``, ``error``, ``usage`` (JSON text for the nested ones)
and ``row`` (the whole row as JSON). Every processor of the job paces its calls through the same
limiter actor as ``llmrun run --engine ray`` (found by the keys, endpoint and limits) and the
same budget actor (found by the job hash), so the recipe's rate limits, key pool and
``run.budget_usd`` hold for all of them together.

The recipe's ``data`` and ``output`` sections are not used: Ray Data reads and writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmrun import Row
from llmrun.engine_api import NotSent, Work, record_id

from .workers import RecipeStages

COLUMNS = ("id", "status", "text", "fields", "error", "usage", "row")


class Processor:
    """A callable for ``Dataset.map_batches``; the recipe is loaded once per process that uses
    it (no key is pickled with it: only the recipe's path and overrides travel)."""

    def __init__(self, recipe: str, overrides: Sequence[str] = ()) -> None:
        self.recipe_path = str(recipe)
        self.overrides = list(overrides)
        self._own: RecipeStages | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"recipe_path": self.recipe_path, "overrides": self.overrides}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["recipe_path"], state["overrides"])  # type: ignore[misc]

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        if self._own is None:
            self._own = RecipeStages(self.recipe_path, self.overrides)
            self._loop = asyncio.new_event_loop()
        assert self._loop is not None
        records = _records(batch)
        rows = self._loop.run_until_complete(self._process(records))
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for row in rows:
            out["id"].append(row["id"])
            out["status"].append(row["status"])
            out["text"].append(row.get("text"))
            for name in ("fields", "error", "usage"):
                value = row.get(name)
                out[name].append(None if value is None else json.dumps(value))
            out["row"].append(json.dumps(row, ensure_ascii=False))
        return out

    async def _process(self, records: list[dict[str, Any]]) -> list[Row]:
        assert self._own is not None
        own = self._own
        stages = own.stages()
        slots = asyncio.Semaphore(own.recipe.run.concurrency)
        id_field = own.recipe.id_field

        async def one(n: int, data: dict[str, Any]) -> Row:
            rid = record_id(data, id_field)
            where = f"batch:{n + 1}"
            error = None if rid is not None else f"record has no {id_field!r} field (data.id)"
            async with slots:
                try:
                    return await stages.process(Work(rid or where, data, where, error))
                except NotSent:
                    # The budget is spent: the record gets a row saying so, not silence.
                    why = "not sent: run.budget_usd is reached for the cluster"
                    return stages.error_row(Work(rid or where, data, where, None), "budget", why)

        try:
            return list(await asyncio.gather(*(one(n, r) for n, r in enumerate(records))))
        finally:
            if own.budget is not None:
                own.budget.give_back()


def _records(batch: Any) -> list[dict[str, Any]]:
    """Ray Data's batch (a mapping of columns, a pandas DataFrame, or a list) as records."""
    if isinstance(batch, list):
        return [dict(r) for r in batch]
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return [dict(r) for r in batch.to_dict(orient="records")]
    if isinstance(batch, Mapping):
        names = list(batch)
        columns = [list(batch[n]) for n in names]
        return [
            {n: _plain(v) for n, v in zip(names, values, strict=True)}
            for values in zip(*columns, strict=True)
        ]
    raise TypeError(f"cannot read a batch of type {type(batch).__name__}")


def _plain(value: Any) -> Any:
    """A numpy scalar as its Python value (templates and ids want plain values)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


def processor(recipe: str, overrides: Sequence[str] = ()) -> Processor:
    """The recipe as a ``map_batches`` function (see the module's docstring)."""
    return Processor(recipe, overrides)
