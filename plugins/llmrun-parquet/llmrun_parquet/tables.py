"""Rows (JSON-shaped dicts) to Arrow tables, with one schema kept across all part files.

Readers of a folder dataset (pyarrow, pandas, DuckDB, Spark) take the columns and types of one
file for all of them, so every part the writer leaves must have the same schema. Types only
ever widen: null -> anything, integer -> float, anything else that disagrees -> string (the
value's JSON text). A column whose values are all lists of numbers (embedding vectors) is a
list of float64, so readers get vectors, not text; other nested values (objects, lists of
anything else) are stored as JSON text, so rows whose nested fields differ still share one
schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _is_vector(value: Any) -> bool:
    """A list of numbers (bools are not numbers here)."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    )


def _column(values: list[Any]) -> pa.Array:
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(_is_vector(v) for v in present):
        vectors = [None if v is None else [float(x) for x in v] for v in values]
        return pa.array(vectors, pa.list_(pa.float64()))
    plain = [_json_text(v) if isinstance(v, (dict, list, tuple)) else v for v in values]
    try:
        return pa.array(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # Mixed kinds in one column (1 and "one"), or an integer past 64 bits: keep them all,
        # as text.
        text = [v if v is None or isinstance(v, str) else _json_text(v) for v in plain]
        return pa.array(text, pa.string())


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """One column per key seen in any row (in order of first appearance); absent is null."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(str(key), None)
    return pa.table({name: _column([row.get(name) for row in rows]) for name in names})


def widen(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type both ``a`` and ``b`` convert to without losing a value."""
    import pyarrow as pa

    types = pa.types
    if a == b or types.is_null(b):
        return a
    if types.is_null(a):
        return b
    numeric = (types.is_integer, types.is_floating)
    if any(f(a) for f in numeric) and any(f(b) for f in numeric):
        return pa.float64()
    return pa.string()


def merge_schemas(known: pa.Schema | None, new: pa.Schema) -> pa.Schema:
    """``known``'s columns (types widened as ``new`` needs), then ``new``'s other columns."""
    import pyarrow as pa

    if known is None:
        return new
    fields = []
    for field in known:
        index = new.get_field_index(field.name)
        kind = field.type if index < 0 else widen(field.type, new.field(index).type)
        fields.append(pa.field(field.name, kind))
    fields.extend(f for f in new if known.get_field_index(f.name) < 0)
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (absent: null)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if pa.types.is_list(column.type) and not pa.types.is_list(field.type):
                # Vectors in one part, other values in another: all become JSON text.
                text = [None if v is None else _json_text(v) for v in column.to_pylist()]
                columns.append(pa.array(text, field.type))
                continue
            columns.append(column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.table(columns, schema=schema)
