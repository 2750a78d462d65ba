"""CLI commands beyond run/validate/plugins/schema, one module each (see cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..access import Access


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every command on a recipe takes: the file and ``--set`` overrides."""
    parser.add_argument("recipe", help="the recipe file (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. run.concurrency=8 (as given to `llmrun run`)",
    )
    trust = parser.add_argument_group(
        "what the recipe may reach (docs/sharing.md); none of this can be set by the recipe"
    )
    trust.add_argument(
        "--trust",
        action="store_true",
        help="run code the recipe names (a python: postprocessor); also LLMRUN_TRUST=GLOB",
    )
    trust.add_argument(
        "--allow-read",
        action="append",
        default=[],
        metavar="DIR",
        help="let the recipe read files in DIR too (repeatable; also LLMRUN_ALLOW_READ)",
    )
    trust.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="confirm that HOST may receive a key that belongs to another service, e.g. "
        "OPENAI_API_KEY sent to the recipe's base_url (repeatable; also LLMRUN_ALLOW_HOSTS)",
    )
    trust.add_argument(
        "--output",
        action=_OutputAction,
        dest="overrides",
        metavar="PATH",
        help="write to PATH (anywhere: you chose it), as --set output.path=PATH",
    )


class _OutputAction(argparse.Action):
    """``--output PATH``: an override of ``output.path``, given by the user."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        current = list(getattr(namespace, self.dest, None) or [])
        # JSON is YAML: the path arrives as a string whatever characters it holds.
        current.append(f"output.path={json.dumps(str(values))}")
        setattr(namespace, self.dest, current)


def recipe_access(args: argparse.Namespace) -> Access:
    """The user's opt-ins for this command's recipe: the flags, then the environment."""
    from ..access import Access

    return Access.from_user(
        args.recipe,
        trust=bool(getattr(args, "trust", False)),
        allow_read=getattr(args, "allow_read", []),
        allow_host=getattr(args, "allow_host", []),
    )
