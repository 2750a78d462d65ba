"""A plugin registering a name a built-in already has, and one new name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import llmrun


class Echo:
    options_schema: Mapping[str, Any] = {"type": "object", "additionalProperties": False}

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        pass

    def __call__(self, result: llmrun.Result) -> None:
        pass


@llmrun.hookimpl
def register_postprocessors(register: Any) -> None:
    register("strip", Echo)
    register("echo_back", Echo)
