"""``llmrun serve RECIPE``: the recipe behind an HTTP API (llmrun/serve/, docs/serve.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from . import add_recipe_args, recipe_access


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a recipe over HTTP: records, jobs, an OpenAI-compatible gateway, sessions",
    )
    add_recipe_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        help="require `Authorization: Bearer <token>`, the token read from this environment "
        "variable; without it the server listens on loopback only",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=1024,
        metavar="N",
        help="calls that may wait beyond run.concurrency before answering 503 (1024)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=40,
        metavar="N",
        help="messages a chat session keeps, oldest dropped first (40)",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=8 << 20,
        metavar="BYTES",
        help="largest request body taken (8 MiB)",
    )
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe
    from ..errors import RecipeError

    try:
        from ..serve.app import LOOPBACK_HOSTS, Settings, run_server
    except ImportError as exc:
        raise RecipeError(
            f"llmrun serve needs the serve extra: pip install 'llmrun[serve]' ({exc})"
        ) from None
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if len(token) < 16:
            raise RecipeError(
                f"--token-env {args.token_env}: the variable is unset or shorter than 16 characters"
            )
    elif args.host not in LOOPBACK_HOSTS:
        raise RecipeError(
            f"--host {args.host}: without --token-env the server listens on loopback only "
            "(127.0.0.1, ::1, localhost)"
        )
    for name, value, least in (
        ("--queue", args.queue, 0),
        ("--history", args.history, 2),
        ("--max-body", args.max_body, 1024),
        ("--port", args.port, 0),
    ):
        if value < least:
            raise RecipeError(f"{name} must be at least {least}, got {value}")
    if args.port > 65535:
        raise RecipeError(f"--port must be at most 65535, got {args.port}")
    recipe, registry = open_recipe(
        args.recipe, overrides=args.overrides, access=recipe_access(args)
    )
    from .run import reach_lines

    for line in reach_lines(recipe):  # where keys go and what code runs, before serving
        err.print(line, markup=False)
    settings = Settings(
        host=args.host,
        port=args.port,
        token=token,
        max_body=args.max_body,
        queue=args.queue,
        history=args.history,
    )
    run_server(recipe, registry, settings)
    return 0
