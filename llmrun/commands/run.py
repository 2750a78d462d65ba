"""``llmrun run RECIPE``: run (or continue) a recipe in its mode."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..eventloop import LOOPS
from . import add_recipe_args, recipe_access
from .exits import EXIT_ABORTED, EXIT_BUDGET, EXIT_ERRORS, EXIT_INTERRUPTED, EXIT_OK


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run a recipe (continues where a previous run stopped)")
    add_recipe_args(run)
    run.add_argument("--limit", type=int, metavar="N", help="use only the first N records")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over: the old output is moved aside, not deleted",
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="call the records of the output's error rows again (their rows are replaced; "
        "the old output is kept in the state folder)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument(
        "--progress",
        choices=["auto", "rich", "plain", "none"],
        default="auto",
        help="progress display (default: rich on a terminal, plain lines otherwise)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    run.add_argument(
        "--locked",
        action="store_true",
        help="refuse to run when anything differs from the recipe's lock (llmrun lock)",
    )
    run.add_argument(
        "--mode",
        choices=["direct", "batch", "auto"],
        help="direct calls, the provider's batch API, or auto (sets run.mode)",
    )
    cache = run.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        metavar="PATH",
        help="answer identical requests from this call cache, and store new replies in it "
        "(overrides the recipe's cache.path; see `llmrun cache`)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="send every call, ignoring the recipe's cache"
    )
    run.add_argument(
        "--engine",
        metavar="NAME",
        help="where the calls run: local (this process) or a plugin's engine such as ray "
        "(sets run.engine)",
    )
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="the cluster an engine other than local joins (ray: auto or host:port; default: "
        "one started on this machine)",
    )
    run.add_argument(
        "--workers", type=int, metavar="N", help="an engine's worker processes (sets run.workers)"
    )
    run.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="the event loop: auto (uvloop where installed, else asyncio's; the default), "
        "asyncio, uvloop or trio",
    )
    run.set_defaults(handler=handle)


def handle(args: argparse.Namespace, err: Any) -> int:
    import shlex

    from ..api import open_recipe
    from ..errors import RecipeError
    from ..eventloop import run_sync
    from ..job.lockfile import check_lock
    from ..redaction import Redactor
    from ..run.progress import Mode, make_progress, summary_table
    from .cache import cache_overrides
    from .preflight import check_before_run

    if args.limit is not None and args.limit < 0:
        raise RecipeError(f"--limit must be 0 or more, got {args.limit}")
    if args.mode:
        args.overrides = [*args.overrides, f"run.mode={args.mode}"]
    if args.engine:
        args.overrides = [*args.overrides, f"run.engine={args.engine}"]
    if args.workers is not None:
        if args.workers < 1:
            raise RecipeError(f"--workers must be 1 or more, got {args.workers}")
        args.overrides = [*args.overrides, f"run.workers={args.workers}"]
    cache = cache_overrides(args.recipe, args.cache, off=args.no_cache)
    # The command that continues this run: the same one, without --fresh.
    again = shlex.join(
        ["llmrun", "run", args.recipe, *(f"--set={o}" for o in args.overrides)]
        + ([] if args.limit is None else ["--limit", str(args.limit)])
        + ([] if args.cache is None else ["--cache", args.cache])
        + (["--no-cache"] if args.no_cache else [])
        + ([] if not args.address else ["--address", args.address])
    )
    recipe, registry = open_recipe(
        args.recipe, overrides=[*args.overrides, *cache], access=recipe_access(args)
    )
    # The hint repeats the user's --set values: a key given there is shown as its fingerprint.
    again = Redactor({*recipe.secrets, *recipe.api_keys}).message(again)
    for line in reach_lines(recipe):
        err.print(line, markup=False)
    if recipe.run.engine != "local":
        where = f"the cluster at {args.address}" if args.address else "a cluster started here"
        err.print(f"engine {recipe.run.engine}: the calls run on {where}", markup=False)
    for change in check_lock(recipe, registry, locked=args.locked):
        err.print("[yellow]warning[/]: differs from the lock: ", end="")
        err.print(change, markup=False)
    mode: Mode = "none" if args.quiet else args.progress
    progress = make_progress(mode, err)
    # A distribution's own `run` command (llmrun-ray) reuses this one with its own engine.
    engine_for = getattr(args, "make_engine", None) or engine_of(recipe, registry, args)
    engine = engine_for(
        recipe,
        registry,
        progress,
        limit=args.limit,
        fresh=args.fresh,
        retry_errors=args.retry_errors,
    )
    check_before_run(recipe, registry, engine)
    try:
        summary = run_sync(engine.run, args.loop)
    except KeyboardInterrupt:  # Ctrl-C before the run watched for it (start-up)
        err.print(f"interrupted: run `{again}` again to continue", markup=False)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(summary.to_json()))  # noqa: T201 - the command's output
    elif not args.quiet:
        err.print(summary_table(recipe.name, summary.stats, summary.status, summary.output))
    if summary.status == "aborted":
        err.print("[bold red]RunAborted[/]: ", end="")
        err.print(summary.reason or "", markup=False)
        err.print(
            f"finished rows are kept; fix the problem and run `{again}` again to continue",
            markup=False,
        )
        return EXIT_ABORTED
    if summary.status == "budget":
        err.print(f"budget: {summary.reason}", markup=False)
        err.print(f"raise run.budget_usd and run `{again}` again to continue", markup=False)
        return EXIT_BUDGET
    if summary.status == "interrupted":
        err.print(f"interrupted: run `{again}` again to continue", markup=False)
        return EXIT_INTERRUPTED
    return EXIT_ERRORS if summary.stats.error + summary.stats.resumed_error else EXIT_OK


def engine_of(recipe: Any, registry: Any, args: argparse.Namespace) -> Any:
    """What builds the run's engine: llmrun's own, or the one ``run.engine`` names (a plugin's,
    registered with ``register_engines``), given the cluster ``--address`` names."""
    from ..api import make_engine
    from ..errors import RecipeError

    name = recipe.run.engine
    if name == "local":
        if args.address:
            raise RecipeError("--address names a cluster for an engine: give --engine too")
        return make_engine
    build = registry.get("engine", name).cls.build  # the recipe's check found it
    overrides = list(args.overrides)

    def engine_for(recipe: Any, registry: Any, progress: Any, **options: Any) -> Any:
        return build(
            recipe, registry, progress, address=args.address, overrides=overrides, **options
        )

    return engine_for


def reach_lines(recipe: Any) -> list[str]:
    """What a run of this recipe reaches beyond itself, told before it starts: the endpoint
    each key goes to (by fingerprint), the variables it declared in ``env:`` and the code it
    runs because the user trusts it."""
    lines = [f"endpoint {route}" for route in recipe.key_routes]
    if recipe.env_names:
        lines.append(f"reads environment variables (env:): {', '.join(recipe.env_names)}")
    lines += [f"runs code ({recipe.access.trusted_by}): {what}" for what in recipe.code]
    return lines
