"""CLI commands beyond run/validate/plugins/schema, one module each (see cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every command on a recipe takes: the file and ``--set`` overrides."""
    parser.add_argument("recipe", help="the recipe file (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. run.concurrency=8 (as given to `llmrun run`)",
    )
