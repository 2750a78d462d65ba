"""``llmrun cache stats|prune PATH``: look into a call cache, and shrink it (run/cache.py).

``run --cache PATH`` and ``run --no-cache`` become overrides here too (``cache_overrides``).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

DAY_S = 86400.0


def cache_overrides(recipe: str, path: str | None, *, off: bool) -> list[str]:
    """``--no-cache`` and ``--cache PATH`` as ``--set`` overrides (so the recipe's own ``cache:``
    is neither used nor checked): the command line wins over ``cache.path`` (PATH from the
    current folder); the recipe's other cache settings stay."""
    if off:
        return ["cache=null"]
    if path is None:
        return []
    try:  # only to see whether the recipe's cache is a mapping; loading reports any fault
        raw = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    current = raw.get("cache") if isinstance(raw, dict) else None
    key = "cache.path" if isinstance(current, dict) else "cache"
    return [f"{key}={json.dumps(str(Path(path).resolve()))}"]  # a JSON string is YAML


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cache", help="look into a call cache, or shrink it")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    stats = sub.add_parser("stats", help="entries, size and age of a call cache")
    stats.add_argument("path", help="the cache file")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(handler=cmd_stats)
    prune = sub.add_parser(
        "prune", help="delete the least recently used replies, or those unused for long"
    )
    prune.add_argument("path", help="the cache file")
    prune.add_argument(
        "--max-gb",
        type=_positive_float,
        metavar="GB",
        help="evict the least recently used replies until the file fits in GB gigabytes",
    )
    prune.add_argument(
        "--older-than",
        type=_positive_float,
        metavar="DAYS",
        help="delete the replies not used in the last DAYS days",
    )
    prune.set_defaults(handler=cmd_prune)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def cmd_stats(args: argparse.Namespace, err: Any) -> int:
    from ..run.cachedb import CacheDB

    db = CacheDB(Path(args.path), create=False)
    try:
        stats = db.stats()
    finally:
        db.close()
    if args.json:
        print(json.dumps(stats.to_json()))  # noqa: T201 - the command's output
        return 0
    err.print(f"{stats.path}", markup=False)
    err.print(f"  entries     {stats.entries:,}", markup=False)
    err.print(f"  replies     {_size(stats.data_bytes)}", markup=False)
    err.print(f"  on disk     {_size(stats.file_bytes)}", markup=False)
    err.print(f"  least used  {_when(stats.oldest_use)}", markup=False)
    err.print(f"  last used   {_when(stats.newest_use)}", markup=False)
    return 0


def cmd_prune(args: argparse.Namespace, err: Any) -> int:
    from ..errors import RecipeError
    from ..run.cachedb import CacheDB

    if args.max_gb is None and args.older_than is None:
        raise RecipeError("cache prune: say what to delete: --max-gb GB, --older-than DAYS")
    db = CacheDB(Path(args.path), create=False)
    try:
        deleted = db.prune(
            max_bytes=None if args.max_gb is None else int(args.max_gb * 1e9),
            older_than=None if args.older_than is None else time.time() - args.older_than * DAY_S,
        )
        stats = db.stats()
    finally:
        db.close()
    err.print(
        f"{stats.path}: deleted {deleted:,} entries; {stats.entries:,} left, "
        f"{_size(stats.file_bytes)} on disk",
        markup=False,
    )
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
