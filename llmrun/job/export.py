"""``llmrun export``: the JSONL output (the source of truth) to another format, through a
registered writer component (``csv`` and ``json`` built in, ``parquet`` from the
``llmrun-parquet`` plugin). Nested values become dotted columns (``fields.label``).

Reading is streamed in two passes: the first finds the columns (and, for ``order="input"``,
where each id's row starts); the second writes. With ``order="input"`` the memory held is one
entry per row (its id and file offset), not the rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import LlmrunError, PluginError
from ..plugins import Registry
from ..recipe.model import Recipe
from ..values import ComponentContext, flatten

Order = Literal["output", "input"]
BATCH = 1000
PLUGIN_FOR = {"parquet": "llmrun-parquet"}


class ExportError(LlmrunError):
    """The export cannot be done as asked (a missing file, an unknown field)."""


@dataclass
class ExportSummary:
    target: str
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    skipped_lines: int = 0  # damaged lines (a run writing right now, a torn tail)
    missing: int = 0  # with order="input": input records without a row yet


def select_columns(found: Iterable[str], wanted: list[str] | None) -> list[str]:
    """The columns to write: all found, or those named (a name also selects what is nested
    under it: ``fields`` -> ``fields.label``, ``fields.score``), in the order named."""
    found = list(found)
    if not wanted:
        return found
    chosen: list[str] = []
    unknown: list[str] = []
    for name in wanted:
        matches = [c for c in found if c == name or c.startswith(name + ".")]
        if not matches:
            unknown.append(name)
        chosen.extend(c for c in matches if c not in chosen)
    if unknown:
        raise ExportError(
            f"no such field: {', '.join(unknown)} (available: {', '.join(found) or 'none'})"
        )
    return chosen


def export(
    source: Path,
    target: Path,
    to: str,
    registry: Registry,
    *,
    fields: list[str] | None = None,
    order: Order = "output",
    recipe: Recipe | None = None,
) -> ExportSummary:
    """Write ``source`` (llmrun JSONL output) to ``target`` with the writer named ``to``."""
    writer_cls = _writer(registry, to)
    if not source.is_file():
        raise ExportError(f"no output file at {source}")
    if order == "input" and recipe is None:
        raise ExportError("--order input needs the recipe (--recipe) to read the input ids")
    summary = ExportSummary(str(target))
    columns: dict[str, None] = {}
    offsets: dict[str, list[int]] = {}
    for offset, row in _rows(source, summary):
        for key in flatten(row):
            columns.setdefault(key)
        if order == "input":
            offsets.setdefault(str(row["id"]), []).append(offset)
    summary.columns = select_columns(columns, fields)
    rows = _in_input_order(source, offsets, recipe, registry, summary) if recipe else None
    if rows is None:
        rows = (row for _, row in _rows(source, ExportSummary("")))
    tmp = target.with_name(f".{target.stem}.export-{os.getpid()}{target.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    context = ComponentContext(target.parent, "export")
    writer = writer_cls({"path": str(tmp.resolve())}, context)
    try:
        for _ in writer.open():
            pass  # a fresh file: nothing to read back
        batch: list[dict[str, Any]] = []
        for row in rows:
            flat = flatten(row)
            batch.append({c: flat.get(c) for c in summary.columns})
            if len(batch) >= BATCH:
                writer.write(batch)
                summary.rows += len(batch)
                batch = []
        if batch:
            writer.write(batch)
            summary.rows += len(batch)
        writer.sync()
        writer.close()
        _replace(tmp, target)
    finally:
        _remove(tmp)
    return summary


def _replace(tmp: Path, target: Path) -> None:
    """Put the finished export in place. A writer may write a folder (the parquet plugin's
    part files): an old folder is renamed away first, since a rename cannot replace it."""
    if target.is_dir():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)  # an export is derived from the JSONL: the old one is not kept
    else:
        os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _writer(registry: Registry, name: str) -> Any:
    try:
        return registry.get("writer", name).cls
    except PluginError as exc:
        plugin = PLUGIN_FOR.get(name)
        if plugin is None:
            raise
        raise PluginError(
            f"{exc}; the {name!r} writer comes from the {plugin} plugin: "
            f"pip install {plugin} (or pip install ./plugins/{plugin} from a clone)"
        ) from None


def _rows(path: Path, summary: ExportSummary) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as fh:
        offset = 0
        for line in fh:
            start, offset = offset, offset + len(line)
            row = _parse(line)
            if row is None:
                summary.skipped_lines += 1 if line.strip() else 0
                continue
            yield start, row


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "id" in row else None


def _in_input_order(
    source: Path,
    offsets: dict[str, list[int]],
    recipe: Recipe,
    registry: Registry,
    summary: ExportSummary,
) -> Iterator[dict[str, Any]]:
    """The rows in the order of the recipe's input, then any row no input record names (ids
    the input no longer holds), in output order."""
    from ..plugins import build_component
    from .ids import record_id

    context = ComponentContext(recipe.base_dir, recipe.name, access=recipe.access)
    loader = build_component(registry, "loader", recipe.data, context)
    with open(source, "rb") as fh:

        def at(offset: int) -> dict[str, Any]:
            fh.seek(offset)
            row = _parse(fh.readline())
            assert row is not None
            return row

        for rec in loader.records():
            rid = rec.where if rec.data is None else record_id(rec.data, recipe.id_field)
            found = offsets.get(rid or rec.where)
            if not found:
                summary.missing += 1
                continue
            yield at(found.pop(0))
        rest = sorted(o for left in offsets.values() for o in left)
        for offset in rest:
            yield at(offset)
