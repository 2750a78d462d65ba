"""Built-in postprocessors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..hookspecs import Register, hookimpl
from ..values import ComponentContext, Result


class Strip:
    """Trim whitespace (and optionally given characters) around the reply's text."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "chars": {"type": "string", "description": "Characters to trim instead of whitespace."}
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.chars = options.get("chars")

    def __call__(self, result: Result) -> None:
        if result.text is not None:
            result.text = result.text.strip(self.chars)


@hookimpl
def register_postprocessors(register: Register) -> None:
    register("strip", Strip)
