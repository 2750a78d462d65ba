"""The ``llmrun`` command. Errors become one-line messages here and nowhere else.

Exit codes:
  0    the run finished and every record is ``ok`` (other commands: success)
  1    the run finished, but some records ended as ``error`` rows
  2    bad usage, recipe or plugin: nothing was called
  3    the run was aborted by a run-level failure (rejected keys, unknown model, unreachable
       endpoint); run again after fixing it, finished rows are kept
  4    another run is writing the same output
  5    the run stopped at run.budget_usd: the next call could have exceeded it (calls in
       flight were finished and written); raise the budget and run again to continue
  130  interrupted (Ctrl-C, SIGTERM); run the same command again to continue
  70   an internal error (a bug: please report it, with the traceback from --debug)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_ABORTED, EXIT_LOCKED, EXIT_BUDGET = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED, EXIT_INTERNAL = 130, 70

# Commands beyond run/validate/plugins/schema live in llmrun/commands/<name>.py, one module
# each. A module defines ``register(subparsers)``, which adds its parser and sets
# ``handler=fn(args, err) -> exit code``. Modules import what they need inside the handler so
# that ``llmrun --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "plan",
    "lock",
    "init",
    "plugin",
    "status",
    "repost",
    "export",
    "cancel",
)


def build_parser() -> argparse.ArgumentParser:
    from ..__about__ import __version__

    parser = argparse.ArgumentParser(
        prog="llmrun",
        description="Run large, repeatable jobs of LLM calls from a YAML recipe.",
        epilog="Exit codes: 0 all ok, 1 finished with error rows, 2 bad recipe or usage, "
        "3 aborted, 4 output locked, 5 budget reached, 130 interrupted (run again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"llmrun {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    from . import add_recipe_args

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a recipe (continues where a previous run stopped)")
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
    run.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help=argparse.SUPPRESS
    )

    val = sub.add_parser("validate", help="check a recipe and its data without calling anything")
    add_recipe_args(val)
    val.add_argument(
        "--records",
        type=_positive_int,
        default=20,
        metavar="N",
        help="check the prompt against the first N records (default 20)",
    )

    plugins = sub.add_parser("plugins", help="list every component and where it comes from")
    plugins.add_argument("--json", action="store_true")

    schema = sub.add_parser("schema", help="print the recipe JSON Schema")
    schema.add_argument(
        "--base", action="store_true", help="the core schema only, without component option schemas"
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        builtin = {
            "run": cmd_run,
            "validate": cmd_validate,
            "plugins": cmd_plugins,
            "schema": cmd_schema,
        }
        handler = builtin.get(args.command) or args.handler
        return int(handler(args, err))
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_error(exc, err, debug=args.debug)


def report_error(exc: BaseException, err: Any, *, debug: bool) -> int:
    from ..errors import LlmrunError, LockedError, RecipeError, RunAborted

    if debug:
        err.print_exception()
    # A task group wraps what one task raised: report the error itself.
    while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    if isinstance(exc, RecipeError):
        err.print(f"[bold red]RecipeError[/]: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        return EXIT_USAGE
    if isinstance(exc, LlmrunError):
        err.print(f"[bold red]{type(exc).__name__}[/]: ", end="")
        err.print(str(exc), markup=False)
        if isinstance(exc, LockedError):
            return EXIT_LOCKED
        return EXIT_ABORTED if isinstance(exc, RunAborted) else EXIT_USAGE
    err.print(f"[bold red]internal error[/]: {type(exc).__name__}: ", end="")
    err.print(str(exc), markup=False)
    if not debug:
        err.print("run again with --debug for the traceback, and please report it")
    return EXIT_INTERNAL


def cmd_run(args: argparse.Namespace, err: Any) -> int:
    import shlex

    import anyio

    from ..api import open_recipe
    from ..errors import RecipeError
    from ..job.lockfile import check_lock
    from ..run.engine import Engine
    from ..run.progress import Mode, make_progress, summary_table
    from .preflight import check_before_run

    if args.limit is not None and args.limit < 0:
        raise RecipeError(f"--limit must be 0 or more, got {args.limit}")
    if args.mode:
        args.overrides = [*args.overrides, f"run.mode={args.mode}"]
    # The command that continues this run: the same one, without --fresh.
    again = shlex.join(
        ["llmrun", "run", args.recipe, *(f"--set={o}" for o in args.overrides)]
        + ([] if args.limit is None else ["--limit", str(args.limit)])
    )
    recipe, registry = open_recipe(args.recipe, overrides=args.overrides)
    for change in check_lock(recipe, registry, locked=args.locked):
        err.print("[yellow]warning[/]: differs from the lock: ", end="")
        err.print(change, markup=False)
    mode: Mode = "none" if args.quiet else args.progress
    progress = make_progress(mode, err)
    engine = Engine(
        recipe,
        registry,
        progress,
        limit=args.limit,
        fresh=args.fresh,
        retry_errors=args.retry_errors,
    )
    check_before_run(recipe, registry, engine)
    try:
        summary = anyio.run(engine.run, backend=args.backend)
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


def cmd_validate(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe
    from ..errors import RecipeError
    from ..job.checks import check_against_data
    from ..plugins import load_registry

    # Lazy: a recipe of built-in components imports no third-party plugin (plugins.py).
    registry = load_registry(lazy=True)
    recipe, registry = open_recipe(args.recipe, overrides=args.overrides, registry=registry)
    report = check_against_data(recipe, registry, sample=args.records)
    for note in report.notes:
        err.print(f"  {note}", markup=False)
    if report.problems:
        raise RecipeError(report.problems)
    err.print(
        f"{args.recipe}: ok (loader {recipe.data.name}, provider {recipe.provider.name}, "
        f"{report.sampled} record(s) checked)",
        markup=False,
    )
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace, err: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..plugins import load_registry

    registry = load_registry()
    if args.json:
        data = {
            "components": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "plugin": c.plugin,
                    "package": c.package,
                    "version": c.version,
                }
                for c in registry.all()
            ],
            "failures": [f.__dict__ | {"names": list(f.names)} for f in registry.failures],
        }
        print(json.dumps(data, indent=2))  # noqa: T201 - the command's output
        return EXIT_OK
    # Names are what a recipe is written with: never wrapped ("openai-completi / ons" cannot
    # be copied) nor cut. A table when it fits the terminal; else one plain line each, which
    # the terminal may wrap but nothing cuts.
    rows = [(c.kind, c.name, c.package, c.version, c.plugin) for c in registry.all()]
    header = ("kind", "name", "package", "version", "plugin")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    console = Console()
    if sum(widths) + 3 * len(widths) + 1 <= console.width:
        table = Table()
        for column in header:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        plain = Console(soft_wrap=True, highlight=False)
        for row in [header, *rows]:
            line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
            plain.print(line.rstrip(), markup=False)
    for f in registry.failures:
        err.print(f"[yellow]plugin {f.plugin} ({f.package} {f.version}) failed[/]: ", end="")
        err.print(f.error, markup=False)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, err: Any) -> int:
    from ..plugins import load_registry
    from ..recipe.schema import base_schema, composed_schema

    schema = base_schema() if args.base else composed_schema(load_registry())
    print(json.dumps(schema, indent=2))  # noqa: T201 - the command's output
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
