"""``llmrun repost RECIPE``: rerun the postprocessors on the stored replies, no API call."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import add_recipe_args, recipe_access


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repost",
        help="rerun the postprocessors on the replies already in the output (no API call)",
        description="Run the recipe's (changed) postprocess chain again on the replies stored "
        "in its output and replace the output atomically, through its writer; the old one is "
        "kept in the state folder. Rows whose call failed are left as they are.",
    )
    add_recipe_args(parser)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON on stdout")
    parser.add_argument(
        "--force",
        action="store_true",
        help="repost even though the calls (data, prompt, provider, generation) changed",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe_offline
    from ..run.repost import repost
    from .exits import EXIT_ERRORS, EXIT_OK

    recipe, registry = open_recipe_offline(
        args.recipe, overrides=args.overrides, access=recipe_access(args)
    )
    summary = repost(recipe, registry, force=args.force)
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False)
    if args.json:
        print(json.dumps(summary.to_json()))  # noqa: T201 - the command's output
    else:
        kept = (
            f"previous output kept at {summary.previous}"
            if summary.previous
            else "the output is unchanged"
        )
        err.print(
            f"{summary.output}: reposted {summary.redone} row(s): {summary.ok} ok, "
            f"{summary.error} error, {summary.changed} changed; {summary.kept} left as they "
            f"were (no stored reply); {kept}",
            markup=False,
        )
        if summary.unreadable:
            err.print(f"{summary.unreadable} damaged line(s) copied unchanged", markup=False)
    return EXIT_ERRORS if summary.errors_in_output else EXIT_OK
