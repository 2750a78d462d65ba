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
    from rich.table import Table

    from ..plugins import load_registry
    from ..terminal import SafeConsole

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
    table = Table()
    for column in ("kind", "name", "package", "version", "plugin"):
        # Folded, never cut with an ellipsis: the names are what the reader came for.
        table.add_column(column, overflow="fold")
    for c in registry.all():
        table.add_row(c.kind, c.name, c.package, c.version, c.plugin)
    SafeConsole().print(table)
    for f in registry.failures:
        err.print(f"[yellow]plugin {f.plugin} ({f.package} {f.version}) failed[/]: ", end="")
        err.print(f.error, markup=False)
    return EXIT_OK
