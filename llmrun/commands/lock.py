"""``llmrun lock RECIPE``: write ``recipe.lock`` beside the recipe (see llmrun/job/lockfile.py)."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_recipe_args, recipe_access


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lock", help="record versions and file hashes in RECIPE.lock, for `run --locked`"
    )
    add_recipe_args(p)
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing: list what differs from the lock (exit 2 if anything does)",
    )
    p.set_defaults(handler=cmd_lock)


def cmd_lock(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe
    from ..job.lockfile import check_lock, lock_path, write_lock
    from ..plugins import load_registry

    recipe, registry = open_recipe(
        args.recipe,
        overrides=args.overrides,
        registry=load_registry(lazy=True),
        access=recipe_access(args),
    )
    if args.check:
        check_lock(recipe, registry, locked=True)  # raises LockDrift, listing every change
        err.print(f"{lock_path(recipe.path)}: up to date", markup=False)
        return 0
    path = write_lock(recipe, registry)
    err.print(f"wrote {path}", markup=False)
    return 0
