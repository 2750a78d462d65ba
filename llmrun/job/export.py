"""``llmrun export``: a run's output in another format, through registered writer components:
read with the writer that wrote it (its ``read()``: the JSONL output by default, a parquet
folder, any writer that can read its output back), written with the one named ``to`` (``csv``
and ``json`` built in, ``parquet`` from the ``llmrun-parquet`` plugin). Nested values become
dotted columns (``fields.label``).

Reading is streamed in two passes: the first finds the columns; the second writes. With
``order="input"`` the first pass also copies the rows to a spool file beside the target (a
writer's ``read()`` has no random access), and the memory held is one entry per row (its id and
offset in the spool), not the rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import LlmrunError, PluginError
from ..jsonio import loads, row_line
from ..plugins import Registry, build_component
from ..recipe.model import ComponentSpec, Recipe
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
    missing: int = 0  # with order="input": input records without a row yet
    unreadable: int = 0  # damaged lines the reading writer left out (when it counts them)


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
    source_writer: str | None = None,
) -> ExportSummary:
    """Write the output at ``source`` to ``target`` with the writer named ``to``. ``source`` is
    read with the writer named ``source_writer``; without one, with the recipe's writer when
    ``source`` is the recipe's output, else as JSONL."""
    writer_cls = _writer(registry, to)
    if order == "input" and recipe is None:
        raise ExportError("--order input needs the recipe (--recipe) to read the input ids")
    reader = _reader(source, registry, recipe, source_writer)
    read: Callable[[], Iterator[Mapping[str, Any]]] = reader.read
    summary = ExportSummary(str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.export-{os.getpid()}{target.suffix}")
    spool = target.with_name(f".{target.name}.export-{os.getpid()}.spool")
    try:
        columns: dict[str, None] = {}
        offsets: dict[str, list[int]] = {}
        with open(spool, "w+b") if order == "input" else _NoSpool() as keep:
            for row in read():
                for key in flatten(row):
                    columns.setdefault(key)
                if keep is not None:
                    offsets.setdefault(str(row["id"]), []).append(keep.tell())
                    keep.write(row_line(row))
            summary.columns = select_columns(columns, fields)
            summary.unreadable = int(getattr(reader, "unreadable", 0) or 0)
            if keep is not None and recipe is not None:
                rows: Iterable[Mapping[str, Any]] = _in_input_order(
                    keep, offsets, recipe, registry, summary
                )
            else:
                rows = read()
            _write(writer_cls, tmp, rows, summary)
        _replace(tmp, target)
    finally:
        _remove(tmp)
        _remove(spool)
    return summary


def _reader(source: Path, registry: Registry, recipe: Recipe | None, name: str | None) -> Any:
    """The writer that reads ``source`` back with ``read()`` (each call from the start)."""
    if not source.exists():
        raise ExportError(f"no output at {source}")
    own = recipe is not None and source.resolve() == recipe.output_path.resolve()
    if recipe is not None and own and name in (None, recipe.writer.name):
        # The recipe's own writer, with its options.
        spec, context = recipe.writer, ComponentContext(recipe.base_dir, recipe.name)
    else:
        if name is None and source.is_dir():
            raise ExportError(
                f"{source} is a folder, not a JSONL output: name the writer that wrote it "
                "(--from parquet, say)"
            )
        spec = ComponentSpec(name or "jsonl", {"path": str(source.resolve())}, "--from")
        context = ComponentContext(source.parent, "export")
    if recipe is not None:
        context = dataclasses.replace(context, access=recipe.access)
    writer = build_component(registry, "writer", spec, context)
    read: Callable[[], Iterator[Mapping[str, Any]]] | None = getattr(writer, "read", None)
    if read is None:
        raise ExportError(
            f"the {spec.name!r} writer cannot read its output back (it has no read()): "
            "nothing can be exported from it"
        )
    return writer


def _write(
    writer_cls: Any, tmp: Path, rows: Iterable[Mapping[str, Any]], summary: ExportSummary
) -> None:
    context = ComponentContext(tmp.parent, "export")
    writer = writer_cls({"path": str(tmp.resolve())}, context)
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


class _NoSpool:
    """``with`` stand-in for the spool when the rows are written in the output's order."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def _in_input_order(
    spool: Any,
    offsets: dict[str, list[int]],
    recipe: Recipe,
    registry: Registry,
    summary: ExportSummary,
) -> Iterator[dict[str, Any]]:
    """The rows in the order of the recipe's input, then any row no input record names (ids
    the input no longer holds), in output order."""
    from .ids import record_id

    context = ComponentContext(recipe.base_dir, recipe.name, access=recipe.access)
    loader = build_component(registry, "loader", recipe.data, context)

    def at(offset: int) -> dict[str, Any]:
        spool.seek(offset)
        row: dict[str, Any] = loads(spool.readline())
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
