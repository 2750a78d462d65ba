"""``llmrun export OUTPUT --to csv|json|parquet``: a run's output in another format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's output as csv, json or parquet (nested values flattened)",
        description="Convert a run's output with writer components: read with the writer that "
        "wrote it (JSONL by default; --from, or the recipe's writer with --recipe), written with "
        "--to (csv and json built in; parquet from the llmrun-parquet plugin). Nested values "
        "become dotted columns (fields.label). The output is left as it is.",
    )
    parser.add_argument("output", help="the output of a run (a JSONL file by default)")
    parser.add_argument(
        "--from",
        dest="source_writer",
        metavar="WRITER",
        help="the writer that wrote OUTPUT, to read it back (default: the recipe's writer "
        "when OUTPUT is the recipe's output, else jsonl); e.g. parquet for a parquet folder",
    )
    parser.add_argument("--to", required=True, metavar="FORMAT", help="csv, json, parquet, ...")
    parser.add_argument(
        "-o", "--out", metavar="PATH", help="where to write (default: OUTPUT with the new suffix)"
    )
    parser.add_argument(
        "--fields",
        metavar="A,B.C",
        help="columns to keep, in order; a name also takes what is nested under it "
        "(fields -> fields.label, fields.score)",
    )
    parser.add_argument(
        "--order",
        choices=["output", "input"],
        default="output",
        help="row order: as written (default), or the input's order (needs --recipe)",
    )
    parser.add_argument(
        "--recipe",
        metavar="RECIPE",
        help="the recipe: its input order, and the writer its output is read with",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, err: Any) -> int:
    from ..api import open_recipe_offline
    from ..job.export import export
    from ..plugins import load_registry
    from .exits import EXIT_OK

    source = Path(args.output)
    target = Path(args.out) if args.out else source.with_suffix("." + args.to)
    if target.resolve() == source.resolve():
        target = source.with_name(source.name + "." + args.to)
    recipe = None
    if args.recipe:
        recipe, registry = open_recipe_offline(args.recipe)
    else:
        registry = load_registry()
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    summary = export(
        source,
        target,
        args.to,
        registry,
        fields=fields,
        order=args.order,
        recipe=recipe,
        source_writer=args.source_writer,
    )
    err.print(
        f"wrote {summary.rows} row(s), {len(summary.columns)} column(s) to {summary.target}",
        markup=False,
    )
    if summary.unreadable:
        err.print(f"skipped {summary.unreadable} damaged line(s) of the output", markup=False)
    if summary.missing:
        err.print(f"{summary.missing} input record(s) have no row yet", markup=False)
    return EXIT_OK
