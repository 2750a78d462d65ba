"""A working third-party plugin: a loader of generated records and a postprocessor."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import llmrun


class Numbers:
    """Loader: ``count`` records ``{"n": "<i>", "word": "number <i>"}``; with ``fail_at``, it
    raises there (a loader with a bug)."""

    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["count"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "fail_at": {"type": "integer"},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.total = int(options["count"])
        self.fail_at = options.get("fail_at")

    def records(self) -> Iterator[llmrun.SourceRecord]:
        for i in range(self.total):
            if i == self.fail_at:
                raise RuntimeError(f"numbers broke at {i}")
            yield llmrun.SourceRecord({"n": str(i), "word": f"number {i}"}, f"numbers:{i}")

    def count(self) -> int:
        return self.total


class Shout:
    """Postprocessor: upper-case the reply, then add ``suffix``."""

    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"suffix": {"type": "string"}},
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.suffix = str(options.get("suffix", ""))

    def __call__(self, result: llmrun.Result) -> None:
        if result.text is not None:
            result.text = result.text.upper() + self.suffix


@llmrun.hookimpl
def register_loaders(register: Any) -> None:
    register("numbers", Numbers)


@llmrun.hookimpl
def register_postprocessors(register: Any) -> None:
    register("shout", Shout)
