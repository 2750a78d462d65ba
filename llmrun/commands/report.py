"""``llmrun report RECIPE|OUTPUT``: one self-contained HTML file with the run's plots and tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an offline HTML report of a run (plots of throughput, latency, tokens, "
        "cost, errors; the slowest, costliest and failed rows)",
    )
    add_source_args(parser)
    parser.add_argument(
        "-o", "--out", metavar="PATH", help="where to write (default: OUTPUT.report.html)"
    )
    parser.set_defaults(handler=run)


def add_source_args(parser: Any) -> None:
    """RECIPE|OUTPUT and --set: what ``report`` and ``view`` read (``resolve_output``)."""
    parser.add_argument("source", metavar="RECIPE|OUTPUT", help="a recipe, or a run's JSONL output")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (as given to `llmrun run`)",
    )


def resolve_output(source: str, overrides: list[str]) -> tuple[Path, str, Any]:
    """(output path, name, recipe or None) for a recipe file or an output file."""
    from ..errors import LlmrunError

    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml"):
        from ..api import open_recipe

        recipe, _ = open_recipe(path, overrides=overrides)
        if recipe.writer.name != "jsonl":
            raise LlmrunError(
                f"report and view read a JSONL output; this recipe writes with "
                f"{recipe.writer.name!r}"
            )
        return recipe.output_path, recipe.name, recipe
    if overrides:
        raise LlmrunError("--set applies to a recipe, not to an output file")
    if not path.is_file():
        raise LlmrunError(f"{source}: no such output file (give a recipe or a run's JSONL output)")
    return path, path.stem, None


def run(args: argparse.Namespace, err: Any) -> int:
    from ..job.store import RunState
    from ..report.data import gather, read_pace_events
    from ..report.page import write_report
    from .exits import EXIT_OK

    output, name, _ = resolve_output(args.source, args.overrides)
    if not output.exists():
        from ..errors import LlmrunError

        raise LlmrunError(f"{output}: no output yet (run the recipe first)")
    data = gather(output)
    state = RunState(output)
    data.manifest = state.read_manifest() or {}
    data.pace_events = read_pace_events(state.dir / "run.log")
    if (state.dir / "batch" / "journal.json").exists():
        from ..batch.status import describe_output

        data.batches = describe_output(output)
    name = str(data.manifest.get("name") or name)
    target = Path(args.out) if args.out else output.with_name(output.name + ".report.html")
    write_report(data, name, target)
    err.print(f"wrote {target} ({data.rows:,} rows)", markup=False)
    return EXIT_OK
