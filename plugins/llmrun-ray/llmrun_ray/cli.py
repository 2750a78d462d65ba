"""``llmrun-ray run RECIPE``: ``llmrun run`` on a Ray cluster.

The same options, output, progress and exit codes as ``llmrun run`` (it is that command, with the
driver's engine), plus ``--address`` (a running cluster: ``auto`` or ``host:port``; without it a
local one is started) and ``--workers`` (default: one per CPU the cluster offers).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from llmrun.engine_api import add_run_command

    parser = argparse.ArgumentParser(prog="llmrun-ray", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_command(commands)
    run = commands.choices["run"]  # it has --address and --workers (llmrun run --engine ray)
    run.add_argument("--cpus", type=int, metavar="N", help="CPUs of a cluster started here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    from llmrun.engine_api import report_error

    args = parser_args = build_parser().parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.workers is not None and args.workers < 1:
            from llmrun import RecipeError

            raise RecipeError(f"--workers must be 1 or more, got {args.workers}")
        from .driver import init_ray, ray_engine

        init_ray(args.address, args.cpus)

        def make(recipe: Any, registry: Any, progress: Any, **options: Any) -> Any:
            engine, _ = ray_engine(
                recipe,
                registry,
                progress,
                overrides=parser_args.overrides,
                workers=parser_args.workers,
                **options,
            )
            return engine

        args.make_engine = make
        return int(args.handler(args, err))
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        return report_error(exc, err, debug=args.debug)
