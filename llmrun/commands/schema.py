"""``llmrun schema``: the recipe JSON Schema, with every component's options."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .exits import EXIT_OK


def register(subparsers: Any) -> None:
    schema = subparsers.add_parser("schema", help="print the recipe JSON Schema")
    schema.add_argument(
        "--base", action="store_true", help="the core schema only, without component option schemas"
    )
    schema.set_defaults(handler=handle)


def handle(args: argparse.Namespace, err: Any) -> int:
    from ..plugins import load_registry
    from ..recipe.schema import base_schema, composed_schema

    schema = base_schema() if args.base else composed_schema(load_registry())
    print(json.dumps(schema, indent=2))  # noqa: T201 - the command's output
    return EXIT_OK
