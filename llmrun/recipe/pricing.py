"""What calls cost: a price table as data (``llmrun/data/prices.json``) plus the recipe's own.

Prices are USD per million tokens (and, for image models priced so, USD per image). A model
that is in neither table has an unknown cost: the run says so once and goes on; it never
guesses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..values import Usage

PER = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. ``cached_input`` defaults to ``input`` when not published."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch: float = 1.0  # factor applied in batch mode (0.5: half price)
    per_image: float | None = None  # USD per generated image (DALL-E), on top of tokens

    def cost(self, usage: Usage, *, batch: bool = False) -> float | None:
        """The cost of one call's usage; None when the provider reported no token counts (nor
        images, for a model priced per image)."""
        images = (usage.images or 0) * self.per_image if self.per_image is not None else 0.0
        if usage.input_tokens is None and usage.output_tokens is None:
            if self.per_image is not None and usage.images is not None:
                return images * (self.batch if batch else 1.0)
            return None
        cached = usage.cached_tokens or 0
        fresh = max((usage.input_tokens or 0) - cached, 0)
        cached_price = self.input if self.cached_input is None else self.cached_input
        total = (
            fresh * self.input + cached * cached_price + (usage.output_tokens or 0) * self.output
        ) / PER + images
        return total * (self.batch if batch else 1.0)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], batch: float = 1.0) -> Price:
        return cls(
            input=float(data.get("input", 0.0)),
            output=float(data.get("output", 0.0)),
            cached_input=None if data.get("cached_input") is None else float(data["cached_input"]),
            cache_write=None if data.get("cache_write") is None else float(data["cache_write"]),
            batch=float(data.get("batch", batch)),
            per_image=None if data.get("per_image") is None else float(data["per_image"]),
        )


@cache
def builtin_table() -> dict[str, Any]:
    text = resources.files("llmrun").joinpath("data/prices.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


class PriceTable:
    """Looks up a model's price: the recipe's ``prices:`` first, then the built-in table."""

    def __init__(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._overrides = {name: Price.from_mapping(p) for name, p in (overrides or {}).items()}
        self._builtin: dict[str, Price] = {}
        for provider in builtin_table()["providers"].values():
            factor = float(provider.get("batch", 1.0))
            for model, price in provider["models"].items():
                self._builtin[model] = Price.from_mapping(price, factor)

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model``: exact name, then the longest known prefix (dated snapshots
        like ``gpt-4o-mini-2024-07-18``), then without a vendor prefix (``openai/gpt-4o``)."""
        if not model:
            return None
        for table in (self._overrides, self._builtin):
            found = _match(table, model)
            if found is None and "/" in model:
                found = _match(table, model.rsplit("/", 1)[1])
            if found is not None:
                return found
        return None


def _match(table: Mapping[str, Price], model: str) -> Price | None:
    if model in table:
        return table[model]
    best = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
    return None if best is None else table[best]
