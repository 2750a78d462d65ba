"""``llmrun plan RECIPE``: records, tokens, cost and duration of a run, without calling anything."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_recipe_args, recipe_access


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="what a run would send, cost and take, without calling anything"
    )
    add_recipe_args(p)
    p.add_argument(
        "--sample",
        type=int,
        default=1000,
        metavar="N",
        help="render and count the tokens of the first N prompts to send, and extrapolate "
        "(default 1000; 0 renders none)",
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="plan for only the first N records, like run"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace, err: Any) -> int:
    import json
    import os
    from pathlib import Path

    from ..api import open_recipe
    from ..errors import RecipeError
    from ..job.planning import format_plan, make_plan, missing_env
    from ..plugins import load_registry
    from ..redaction import printable

    if args.sample < 0:
        raise RecipeError(f"--sample must be 0 or more, got {args.sample}")
    if args.limit is not None and args.limit < 0:
        raise RecipeError(f"--limit must be 0 or more, got {args.limit}")
    # An unset key does not stop a plan (nothing is called): say so and go on.
    unset = missing_env(Path(args.recipe), os.environ, args.overrides)
    environ = {**os.environ, **{name: f"<{name} unset>" for name in unset}}
    recipe, registry = open_recipe(
        args.recipe,
        overrides=args.overrides,
        registry=load_registry(lazy=True),
        environ=environ,
        access=recipe_access(args),
    )
    plan = make_plan(recipe, registry, sample=args.sample, limit=args.limit)
    plan.warnings[:0] = [
        f"environment variable ${{{name}}} is not set: `llmrun run` will refuse until it is"
        for name in unset
    ]
    if args.json:
        print(json.dumps(plan.to_json(), indent=2, ensure_ascii=False))  # noqa: T201 - output
    else:
        # Prompts hold record data: no control character of it reaches the terminal.
        print(printable(format_plan(plan)))  # noqa: T201 - the command's output
    return 0
