"""``llmrun cancel RECIPE``: cancel the recipe's running batches and record what finished."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_recipe_args, recipe_access


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cancel", help="cancel the running batches of a recipe and record what they finished"
    )
    add_recipe_args(parser)
    parser.set_defaults(handler=cmd_cancel)


def cmd_cancel(args: argparse.Namespace, err: Any) -> int:
    import functools

    from ..api import make_engine, open_recipe
    from ..batch.runner import cancel_all
    from ..errors import LockedError
    from ..eventloop import run_sync
    from ..run.progress import make_progress
    from .exits import EXIT_ABORTED, EXIT_OK

    recipe, registry = open_recipe(
        args.recipe, overrides=args.overrides, access=recipe_access(args)
    )
    engine = make_engine(recipe, registry, make_progress("none", err), handle_signals=False)
    try:
        with engine.state.locked():
            cancelled = run_sync(functools.partial(cancel_all, engine, record=True))
        running = False
    except LockedError:  # a run is polling them: it records what they finished
        cancelled = run_sync(functools.partial(cancel_all, engine, record=False))
        running = True
    failed = [c for c in cancelled if "error" in c]
    for item in cancelled:
        what = item.get("error") or f"cancel requested ({item.get('state')})"
        err.print(f"batch {item['batch_id']}: {what}", markup=False)
    if not cancelled:
        err.print("no running batch to cancel", markup=False)
        return EXIT_OK
    if running:
        err.print("the running `llmrun run` records what they finished", markup=False)
        return EXIT_ABORTED if failed else EXIT_OK
    # Collect what the cancelled batches finished (polling until they have ended).
    engine.batch_drain_only = True
    summary = run_sync(engine.run)
    err.print(
        f"recorded {summary.stats.ok} ok and {summary.stats.error} error row(s) from the "
        "cancelled batches; `llmrun run` sends the rest again",
        markup=False,
    )
    return EXIT_ABORTED if failed or summary.status == "aborted" else EXIT_OK
