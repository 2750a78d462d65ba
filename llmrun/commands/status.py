"""``llmrun status RECIPE``: where a job stands, from its output and manifest (no network).

Counts rows by status and error type, adds up the spend (rows' ``cost_usd``), counts the
input's records (when the loader can count them cheaply) to say what remains, and shows how the
last run ended. When the output has batch-mode state, it lists the batches too (from the batch
journal: the last state a run saw, no provider call).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import add_recipe_args, recipe_access


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="counts by status and error type, spend and what remains (no network)"
    )
    add_recipe_args(parser)
    parser.add_argument("--json", action="store_true", help="print the status as JSON on stdout")
    parser.set_defaults(handler=status)


def read_status(output: Path, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts from the output's rows: by status, errors by type, spend, torn tail."""
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    retryable = 0
    spend = 0.0
    priced = True
    for row in rows:
        status = str(row.get("status"))
        counts[status] += 1
        if status == "error":
            error = row.get("error") or {}
            errors[str(error.get("type"))] += 1
            retryable += bool(error.get("retryable"))
        cost = row.get("cost_usd")
        if isinstance(cost, int | float):
            spend += cost
        elif status == "ok" and row.get("response") is not None:
            priced = False
    torn = _torn_tail(output)
    return {
        "output": str(output),
        "rows": sum(counts.values()),
        "ok": counts.get("ok", 0),
        "error": counts.get("error", 0),
        "errors_by_type": dict(errors.most_common()),
        "retryable_errors": retryable,
        "spend_usd": round(spend, 8),
        "spend_complete": priced,
        "torn_tail": torn,
    }


def status(args: argparse.Namespace, err: Any) -> int:
    from rich.table import Table

    from ..api import open_recipe_offline
    from ..job.output import read_rows
    from ..job.records import count_selected
    from ..job.store import RunState
    from ..plugins import build_component
    from ..terminal import SafeConsole
    from ..values import ComponentContext

    recipe, registry = open_recipe_offline(
        args.recipe, overrides=args.overrides, access=recipe_access(args)
    )
    report = read_status(recipe.output_path, read_rows(recipe, registry))
    context = ComponentContext(recipe.base_dir, recipe.name, access=recipe.access)
    total: int | None = None
    try:
        loader = build_component(registry, "loader", recipe.data, context)
        # What the recipe covers, selection applied, as every mode reads it.
        total = count_selected(recipe, loader)
    except Exception as exc:  # no input to count is still a status
        err.print(f"cannot count the input records: {type(exc).__name__}: {exc}", markup=False)
    report["total"] = total
    report["remaining"] = None if total is None else max(0, total - report["rows"])
    manifest = RunState(recipe.output_path).read_manifest() or {}
    runs = manifest.get("runs") or []
    last = runs[-1] if runs else None
    report["last_run"] = last
    # A run killed (SIGKILL, power loss) leaves "running" in the manifest: say whether one is.
    running = last is not None and last.get("status") == "running"
    report["running"] = running and _lock_holder_alive(RunState(recipe.output_path).dir)
    budget = recipe.run.budget_usd
    report["budget_usd"] = budget
    report["batches"] = batches = _batches(recipe, RunState(recipe.output_path).dir)
    # Records in a batch not merged yet: submitted (or about to be), not to be sent again.
    report["in_batches"] = sum(b["requests"] for b in batches if b["step"] != "merged")
    report["batch_records"] = {
        "submitted": sum(b["requests"] for b in batches if b["batch_id"]),
        "in_batches": report["in_batches"],
        "merged": sum(
            n
            for b in batches
            if b["step"] == "merged"
            for k, n in b["merged"].items()
            if k != "again"
        ),
    }
    # While a run waits on its batches, the manifest says when it polls next.
    live = manifest.get("batch") if report["running"] else None
    report["next_poll_at"] = live.get("next_poll_at") if isinstance(live, dict) else None
    if args.json:
        print(json.dumps(report))  # noqa: T201 - the command's output
        return 0
    table = Table(title=f"llmrun: {recipe.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    total_text = "?" if total is None else f"{total:,}"
    table.add_row("output", report["output"])
    table.add_row("done", f"{report['rows']:,} of {total_text}")
    table.add_row("ok", f"{report['ok']:,}")
    table.add_row("error", f"{report['error']:,} ({report['retryable_errors']:,} retryable)")
    for kind, n in report["errors_by_type"].items():
        table.add_row(f"  {kind}", f"{n:,}")
    remaining = "?" if report["remaining"] is None else f"{report['remaining']:,}"
    if report["in_batches"]:
        remaining += f" ({report['in_batches']:,} in batches not merged yet)"
    table.add_row("remaining", remaining)
    spend = f"${report['spend_usd']:.4f}"
    if not report["spend_complete"]:
        spend += " (some rows have no known price)"
    if budget is not None:
        spend += f" of run.budget_usd ${budget:g}"
    table.add_row("spend", spend)
    if last is not None:
        ended = last.get("status", "?")
        if ended == "running" and report["running"] is False:
            ended = "ended without a summary (killed?); run it again to continue"
        if last.get("reason"):
            ended += f": {last['reason']}"
        table.add_row("last run", f"{last.get('started_at', '?')} {ended}")
        for url, counts in (last.get("endpoints") or {}).items():
            ok, failed = counts.get("ok", 0), counts.get("failed", 0)
            table.add_row("  endpoint", f"{url}: {ok:,} ok, {failed:,} failed attempts")
    if report["torn_tail"]:
        table.add_row("note", "the output ends in a torn line; the next run repairs it")
    console = SafeConsole()
    console.print(table)
    if batches:
        console.print(_batch_table(batches))
        counts = report["batch_records"]
        line = (
            f"records submitted {counts['submitted']:,}, in batches {counts['in_batches']:,}, "
            f"merged {counts['merged']:,}"
        )
        if isinstance(report["next_poll_at"], int | float):
            import time

            wait = max(0.0, report["next_poll_at"] - time.time())
            line += f"; the running run polls next in {_age(wait)}"
        console.print(line, markup=False, highlight=False)
    for hint in error_hints(report, args.recipe):
        err.print(hint, markup=False)
    return 0


# Error rows that calling again cannot fix: the record or the recipe is what must change.
_RECIPE_FIXES = {
    "template": "the prompt could not be rendered: fix the prompt (or the data)",
    "bad_input": "the record could not be read: fix the data (or data.id)",
}


def error_hints(report: dict[str, Any], recipe: str) -> list[str]:
    """What to do about the error rows, by type: a post-processing error keeps its paid reply
    (``repost`` applies an edited ``postprocess:``, no new call); a template or input error
    needs the recipe or the data fixed before calling again; only the rest are worth calling
    again as they are."""
    by_type: dict[str, int] = report["errors_by_type"]
    hints: list[str] = []
    post = by_type.get("postprocess", 0)
    if post:
        hints.append(
            f"{post:,} postprocess error(s): the replies are kept; edit the recipe's "
            f"postprocess: and run `llmrun repost {recipe}` (no new calls)"
        )
    for kind, why in _RECIPE_FIXES.items():
        if by_type.get(kind):
            hints.append(
                f"{by_type[kind]:,} {kind} error(s): {why}, then run "
                f"`llmrun run {recipe} --retry-errors`"
            )
    rest = report["error"] - post - sum(by_type.get(k, 0) for k in _RECIPE_FIXES)
    if report["retryable_errors"]:
        hints.append(
            f"{report['retryable_errors']:,} retryable error(s): run "
            f"`llmrun run {recipe} --retry-errors` to call them again"
        )
    elif rest > 0:
        hints.append(
            f"{rest:,} other error(s), not retryable as they are: read their messages in the "
            f"output; after fixing the cause, `llmrun run {recipe} --retry-errors` calls them again"
        )
    return hints


def _batches(recipe: Any, state_dir: Path) -> list[dict[str, Any]]:
    """The output's batches (``llmrun.batch.status.describe``); none without batch state."""
    if not (state_dir / "batch" / "journal.json").exists():
        return []
    from ..batch.status import describe

    return describe(recipe)


def _batch_table(batches: list[dict[str, Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    # The provider's text (ids, reasons) is shown as is, never read as rich markup.
    table = Table(title="batches", title_justify="left", highlight=False)
    for name in ("part", "batch id", "state", "counts", "age", "note"):
        table.add_column(name, overflow="fold")
    for b in batches:
        state = b["state"] if not b["outcome"] else f"{b['state']} ({b['outcome']})"
        if b["step"] == "merged":
            state += ", merged"
        counts = b["counts"] or {"total": b["requests"]}
        note = b["reason"] or (f"cancelled: {b['cancelled']}" if b["cancelled"] else "")
        merged = [f"{k} {v}" for k, v in b["merged"].items() if v]
        if merged:  # ok / error rows written, "again": sent again (or to be)
            note = "; ".join(x for x in (note, "merged: " + ", ".join(merged)) if x)
        cells = (
            b["part"],
            b["batch_id"] or "-",
            state,
            " ".join(f"{k} {v}" for k, v in counts.items()),
            "-" if b["age_s"] is None else _age(b["age_s"]),
            note,
        )
        table.add_row(*(Text(str(c)) for c in cells))
    return table


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _lock_holder_alive(state_dir: Path) -> bool | None:
    """Whether the process the output's lock file names (the last to take it) is alive (None:
    cannot tell). Read only: taking the lock to test it could make a run starting that instant
    fail as locked."""
    import os
    import sys

    try:
        holder = (state_dir / "lock").read_text(encoding="utf-8").split()
    except OSError:
        return False
    if len(holder) < 2 or holder[0] != "pid" or not holder[1].isdigit():
        return False if not holder else None
    if sys.platform == "win32":  # pragma: no cover - os.kill(pid, 0) would end the process
        return None
    try:
        os.kill(int(holder[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _torn_tail(output: Path) -> bool:
    """A file output that does not end in a newline: a crash mid-write (the next run repairs
    it). A folder output (the parquet writer's) repairs its own journal."""
    if not output.is_file():
        return False
    with open(output, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return False
        fh.seek(size - 1)
        return fh.read(1) != b"\n"
