"""``llmrun validate RECIPE``: check a recipe and its data without calling anything."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_recipe_args, recipe_access
from .exits import EXIT_OK
from .run import reach_lines


def register(subparsers: Any) -> None:
    val = subparsers.add_parser(
        "validate", help="check a recipe and its data without calling anything"
    )
    add_recipe_args(val)
    val.add_argument(
        "--records",
        type=_positive_int,
        default=20,
        metavar="N",
        help="check the prompt against the first N records (default 20)",
    )
    val.set_defaults(handler=handle)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def handle(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe
    from ..errors import RecipeError
    from ..job.checks import check_against_data
    from ..plugins import load_registry

    # Lazy: a recipe of built-in components imports no third-party plugin (plugins.py).
    registry = load_registry(lazy=True)
    recipe, registry = open_recipe(
        args.recipe, overrides=args.overrides, registry=registry, access=recipe_access(args)
    )
    report = check_against_data(recipe, registry, sample=args.records)
    for note in [*reach_lines(recipe), *report.notes]:
        err.print(f"  {note}", markup=False)
    if report.problems:
        raise RecipeError(report.problems)
    err.print(
        f"{args.recipe}: ok (loader {recipe.data.name}, provider {recipe.provider.name}, "
        f"{report.sampled} record(s) checked)",
        markup=False,
    )
    return EXIT_OK
