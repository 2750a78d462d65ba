"""Output rows: the one shape every record ends in (docs/output.md), and what calls cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from ..errors import RecipeError
from ..recipe.model import Recipe
from ..recipe.pricing import Price, PriceTable
from ..redaction import Redactor
from ..values import Reply, Row, RowError
from .records import Work
from .store import now_iso

_UNSET: Any = object()


def _same(value: Any) -> Any:
    return value


class RowMaker:
    """Builds rows and error objects for one recipe, and prices replies."""

    def __init__(
        self, recipe: Recipe, redact: Redactor, model: str, warn: Callable[[str], None]
    ) -> None:
        self.recipe = recipe
        self.redact = redact
        self.model = model  # the provider's configured model: the price when replies omit one
        self.warn = warn
        self.batch_pricing = False  # batch mode: the provider's batch discount applies
        self._table = PriceTable(recipe.prices)
        self._prices: dict[str | None, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        return self._table.lookup(model)

    def budget_price(self) -> Price | None:
        """The price ``run.budget_usd`` counts spend with (None without a budget); RecipeError
        when the recipe sets a budget for a model with no known price."""
        if self.recipe.run.budget_usd is None:
            return None
        price = self.price(self.model)
        if price is None:
            # A budget that cannot be counted is not a budget.
            raise RecipeError(
                f"run.budget_usd: no price known for model {self.model!r}, so spend cannot be "
                "counted; add it under prices: in the recipe"
            )
        return price

    def cost(self, reply: Reply) -> float | None:
        """What the call cost, from the reported usage and the price of the model."""
        model = reply.model or self.model
        price = self._prices.get(model, _UNSET)
        if price is _UNSET:
            price = self._prices[model] = self._table.lookup(model) or self._table.lookup(
                self.model
            )
            if price is None:
                self.warn(
                    f"no price known for model {model!r}: cost is not counted "
                    "(add it under prices: in the recipe)"
                )
        if price is None:
            return None
        assert isinstance(price, Price)
        return price.cost(reply.usage, batch=self.batch_pricing)

    def row(
        self,
        work: Work,
        attempts: int,
        latency_s: float | None = None,
        *,
        text: str | None = None,
        fields: dict[str, Any] | None = None,
        error: RowError | None = None,
        response: dict[str, Any] | None = None,
        cost: float | None = None,
        cached: bool = False,
        steps: dict[str, Any] | None = None,
        redacted: bool = False,
        key: str | None = None,
    ) -> Row:
        """Every row has the same keys, in this order (see docs/output.md). ``redacted``: the
        text, fields and response come from rows made here (a steps: record's last step)."""
        # A server may echo the key back, even in a 200 answer.
        redact = _same if redacted else self.redact.deep
        row: dict[str, Any] = {
            "id": work.id,
            "status": "ok" if error is None else "error",
            "text": redact(text),
            "fields": redact(fields or {}),
            "error": error,
            "response": redact(response),
        }
        if steps is not None:  # a multi-step recipe: every step's result (run/steps.py)
            row["steps"] = steps
        include, data = self.recipe.include, work.data
        if data is None or include == "none":
            row["record"] = None  # unreadable, or not wanted: the key stays, rows stay uniform
        else:
            row["record"] = data if include == "all" else {k: data[k] for k in include if k in data}
        row["attempts"] = attempts
        row["latency_s"] = None if latency_s is None else round(latency_s, 4)
        row["cost_usd"] = None if cost is None else round(cost, 8)
        row["cached"] = cached  # answered from the call cache (run/cache.py): nothing was sent
        row["key"] = key  # which key answered, by its fingerprint: the report's pace per key
        finished = now_iso()
        row["started_at"] = work.started_at or finished
        row["finished_at"] = finished
        row["recipe_hash"] = self.recipe.job_hash
        # Built key by key for the order the rows are written in (``steps`` among them); the
        # keys are Row's, checked against it by tests/test_docs.py and test_run.py.
        return cast("Row", row)

    def error(
        self,
        work: Work,
        code: str,
        message: str,
        retryable: bool = False,
        status: int | None = None,
    ) -> RowError:
        error: RowError = {
            "type": code,
            "message": self.redact.message(message),
            "retryable": retryable,
        }
        if status is not None:
            error["status"] = status
        if work.where != work.id:
            error["where"] = work.where
        return error
