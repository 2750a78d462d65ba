"""The ``llmrun`` command. Errors become one-line messages here and nowhere else.

Exit codes: commands/exits.py. Each command is a module of this package with
``register(subparsers)``; ``main`` only parses, dispatches and reports errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .exits import EXIT_ABORTED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USAGE

# Every command lives in llmrun/commands/<name>.py, one module each. A module defines
# ``register(subparsers)``, which adds its parser and sets
# ``handler=fn(args, err) -> exit code``. Modules import what they need inside the handler so
# that ``llmrun --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "validate",
    "plugins",
    "schema",
    "plan",
    "lock",
    "init",
    "plugin",
    "status",
    "repost",
    "export",
    "cancel",
    "cache",
    "serve",
    "report",
    "view",
)


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name (the docs' tests check every command and flag)."""
    return _parsers()[1]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from ..__about__ import __version__

    parser = argparse.ArgumentParser(
        prog="llmrun",
        description="Run large, repeatable jobs of LLM calls from a YAML recipe.",
        epilog="Exit codes: 0 all ok, 1 finished with error rows, 2 bad recipe or usage, "
        "3 aborted, 4 output locked, 5 budget reached, 130 interrupted (run again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"llmrun {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser, dict(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    # httpx imports its own command-line client whenever click and pygments are installed
    # (llmrun[serve] brings click, rich brings pygments): rich.syntax, pygments' lexers and click,
    # about 26 ms of every start, for a CLI this process never runs. Marked as absent, httpx
    # falls back to its stub (its documented behaviour without those packages). Only in the
    # command's own process: a program importing llmrun keeps its httpx as it is.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..terminal import SafeConsole

    err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
    try:
        return int(args.handler(args, err))
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


if __name__ == "__main__":
    sys.exit(main())
