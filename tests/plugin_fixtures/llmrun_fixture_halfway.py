"""A plugin that breaks while registering: its hooks raise, or register an unusable class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import llmrun


class Nothing:
    options_schema: Mapping[str, Any] = {"type": "object"}

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        pass

    def __call__(self, result: llmrun.Result) -> None:
        pass


class BadSchema(Nothing):
    options_schema: Mapping[str, Any] = {"type": "objekt"}


@llmrun.hookimpl
def register_loaders(register: Any) -> None:
    register("half_loader", Nothing)
    raise RuntimeError("halfway: registration failed")


@llmrun.hookimpl
def register_postprocessors(register: Any) -> None:
    register("half_post", Nothing)


@llmrun.hookimpl
def register_writers(register: Any) -> None:
    register("bad_schema", BadSchema)
