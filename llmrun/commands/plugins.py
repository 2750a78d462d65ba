"""``llmrun plugins``: every component, the plugin it comes from, and its version."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .exits import EXIT_OK


def register(subparsers: Any) -> None:
    plugins = subparsers.add_parser("plugins", help="list every component and where it comes from")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(handler=handle)


def handle(args: argparse.Namespace, err: Any) -> int:
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
