"""The ``parquet`` loader: streams a Parquet file, a folder of them or a glob, batch by batch.

Only one batch of rows (``batch_size``) is decoded at a time, so memory stays flat whatever the
file's size; ``count()`` adds up the row counts in the files' footers without reading any data.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from llmrun import ComponentContext, Problem, RecipeError, SourceRecord

from .files import parquet_files


class ParquetLoader:
    """Rows of Parquet files as records; ``columns`` picks the fields (default: all)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "A .parquet file, a folder of them (read in name order, as the "
                "parquet writer leaves them) or a glob, relative to the recipe.",
            },
            "columns": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "uniqueItems": True,
                "description": "Read only these columns (default: all).",
            },
            "batch_size": {
                "type": "integer",
                "minimum": 1,
                "default": 1024,
                "description": "Rows decoded at a time.",
            },
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        given = str(options["path"])
        self.base_dir = context.base_dir
        self.pattern = given if glob.has_magic(given) else None
        self.path = (context.base_dir / given).resolve()
        self.columns: list[str] | None = (
            [str(c) for c in options["columns"]] if options.get("columns") else None
        )
        self.batch_size = int(options.get("batch_size", 1024))

    def files(self) -> list[Path]:
        """The files to read, in order; raises FileNotFoundError when there are none."""
        if self.pattern is not None:
            found = sorted(p for p in self.base_dir.glob(self.pattern) if p.is_file())
            if not found:
                raise FileNotFoundError(f"no file matches {self.pattern!r} in {self.base_dir}")
            return found
        if self.path.is_dir():
            found = parquet_files(self.path)
            if not found:
                raise FileNotFoundError(f"no .parquet file in the folder {self.path}")
            return found
        if not self.path.exists():
            raise FileNotFoundError(f"no such file: {self.path}")
        return [self.path]

    def _label(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.base_dir))
        except ValueError:
            return path.name

    def records(self) -> Iterator[SourceRecord]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path in self.files():
            label = self._label(path)
            with pq.ParquetFile(path) as pf:
                self._check_columns(pf.schema_arrow.names, label)
                start = 0
                for group in range(pf.metadata.num_row_groups):
                    size = pf.metadata.row_group(group).num_rows
                    row = start
                    try:
                        for batch in pf.iter_batches(
                            batch_size=self.batch_size, row_groups=[group], columns=self.columns
                        ):
                            for data in batch.to_pylist():
                                row += 1
                                yield SourceRecord(data, f"{label}:{row}")
                    except (OSError, pa.ArrowException) as exc:
                        # The rest of a damaged row group: one error row each, so every record
                        # still ends in the output exactly once, and the run goes on.
                        why = f"{type(exc).__name__}: {exc}"
                        reason = f"row group {group} cannot be decoded ({why})"
                        for n in range(row + 1, start + size + 1):
                            yield SourceRecord(None, f"{label}:{n}", f"{label}:{n}: {reason}")
                    start += size

    def _check_columns(self, names: list[str], label: str) -> None:
        if self.columns is None:
            return
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise RecipeError(
                [
                    Problem(
                        f"{label} has no column {', '.join(map(repr, missing))}; "
                        f"its columns: {', '.join(names)}",
                        "data.columns",
                    )
                ]
            )

    def count(self) -> int | None:
        """Rows in all files, from their footers (no data is read)."""
        import pyarrow.parquet as pq

        try:
            return sum(int(pq.read_metadata(path).num_rows) for path in self.files())
        except (OSError, ValueError):
            return None
