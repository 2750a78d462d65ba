"""``llmrun view RECIPE|OUTPUT``: browse a run's rows in a web page on 127.0.0.1."""

from __future__ import annotations

import argparse
from typing import Any

from .report import add_source_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "view",
        help="browse a run's rows in the browser (on 127.0.0.1): filter, search, each row "
        "with its record, prompt, reply, fields and error",
    )
    add_source_args(parser)
    parser.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free one)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, err: Any) -> int:
    from ..errors import LlmrunError
    from ..report.viewer import Viewer, serve
    from .exits import EXIT_OK
    from .report import resolve_output

    output, name, recipe = resolve_output(args.source, args.overrides)
    if not output.is_file():
        raise LlmrunError(f"{output}: no output yet (run the recipe first)")
    if not 0 <= args.port <= 65535:
        raise LlmrunError(f"--port must be between 0 and 65535, got {args.port}")
    err.print(f"indexing {output} ...", markup=False)

    def ready(url: str) -> None:
        err.print(f"llmrun view: {url} (Ctrl-C to stop)", markup=False)

    try:
        serve(Viewer(output, name, recipe), args.port, ready)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise LlmrunError(f"cannot serve on 127.0.0.1:{args.port}: {exc}") from None
    return EXIT_OK
