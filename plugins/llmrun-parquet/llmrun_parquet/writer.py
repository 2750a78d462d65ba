"""The ``parquet`` writer: a folder of part files plus a JSONL journal, so it survives a crash.

A Parquet file cannot be appended to in place (its footer is written last), so ``path`` is a
folder, the layout Spark, pyarrow, pandas and DuckDB read as one table::

    out.parquet/
      part-00000.parquet      sealed parts, ``row_group_size`` rows each (the last may be short)
      part-00001.parquet
      _pending-00002.jsonl    rows written since the last part, one JSON object per line

``write`` appends rows to the journal and flushes it (a ``kill -9`` right after loses nothing);
once the journal holds ``row_group_size`` rows, or at ``close``, it is sealed: converted to the
next part (written to a temporary name, fsynced, renamed), and then deleted. A journal whose part
exists was sealed already and is deleted; any other journal found by ``open`` had its writer
die: its torn last line (if any) is set aside, and it is sealed then. Readers skip names
starting with ``_`` and ``.``, so they never see a journal or a half-written part.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from llmrun import ComponentContext, Problem, RecipeError

from .tables import conform, merge_schemas, rows_to_table

if TYPE_CHECKING:
    import pyarrow as pa

PART = re.compile(r"part-(\d+)\.parquet")
JOURNAL = re.compile(r"_pending-(\d+)\.jsonl")
COMPRESSIONS = ["zstd", "snappy", "gzip", "brotli", "lz4", "none"]


class ParquetWriter:
    """Rows to a folder of Parquet part files; ``open`` returns the rows already there."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "Output folder (e.g. out/labels.parquet), relative to the recipe.",
            },
            "row_group_size": {
                "type": "integer",
                "minimum": 1,
                "default": 10000,
                "description": "Rows per part file (journalled until then).",
            },
            "compression": {"enum": COMPRESSIONS, "default": "zstd"},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        self.rows_per_part = int(options.get("row_group_size", 10000))
        self.compression = str(options.get("compression", "zstd"))
        self._warn = context.warn
        self._journal: IO[str] | None = None
        self._pending = 0  # rows in the open journal
        self._index = 0  # number of the next part
        self._schema: pa.Schema | None = None

    # -- the Writer protocol ---------------------------------------------------------------

    def open(self) -> Iterator[Mapping[str, Any]]:
        """Seal what a crashed writer left, then return the rows already written (lazily)."""
        if self.path.exists() and not self.path.is_dir():
            raise RecipeError(
                [
                    Problem(
                        f"{self.path} is a file; the parquet writer writes a folder of part "
                        "files: give a path that does not exist yet (or such a folder)",
                        "output.path",
                    )
                ]
            )
        self.path.mkdir(parents=True, exist_ok=True)
        parts = self._numbered(PART)
        for number, journal in sorted(self._numbered(JOURNAL).items()):
            if number in parts:
                journal.unlink()  # sealed, but the writer died before deleting it
                continue
            rows = self._read_journal(journal)
            if rows:
                parts[number] = self._write_part(number, rows, parts)
            journal.unlink()
        self._index = max(parts, default=-1) + 1
        self._schema = self._known_schema(parts.values())
        return self._existing(sorted(parts.values()))

    def read(self) -> Iterator[Mapping[str, Any]]:
        """The rows already written, read-only (``llmrun status``, ``plan``): the sealed parts,
        then the whole lines of journals not sealed yet; nothing is sealed or moved."""
        import pyarrow.parquet as pq

        if not self.path.is_dir():
            return
        for _, part in sorted(self._numbered(PART).items()):
            with pq.ParquetFile(part) as pf:
                for batch in pf.iter_batches(batch_size=8192):
                    for row in batch.to_pylist():
                        yield _nested(row)
        sealed = self._numbered(PART)
        for number, journal in sorted(self._numbered(JOURNAL).items()):
            if number in sealed:
                continue  # sealed already: its rows were read from the part
            data = journal.read_bytes()
            for line in data[: data.rfind(b"\n") + 1].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "id" in row:
                    yield row

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if self._journal is None:
            self._journal = open(  # noqa: SIM115 - closed when sealed or in close()
                self._journal_path(self._index), "a", encoding="utf-8", errors="backslashreplace"
            )
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        self._journal.write(text)
        self._journal.flush()  # to the OS: survives a kill -9 of this process
        self._pending += len(rows)
        if self._pending >= self.rows_per_part:
            self._seal()

    def sync(self) -> None:
        if self._journal is not None:
            self._journal.flush()
            os.fsync(self._journal.fileno())

    def close(self) -> None:
        if self._pending:
            self._seal()
        elif self._journal is not None:
            self._journal.close()
            self._journal = None
            self._journal_path(self._index).unlink(missing_ok=True)

    # -- parts -----------------------------------------------------------------------------

    def _journal_path(self, number: int) -> Path:
        return self.path / f"_pending-{number:05d}.jsonl"

    def _numbered(self, pattern: re.Pattern[str]) -> dict[int, Path]:
        found = {}
        for entry in self.path.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found[int(match.group(1))] = entry
        return found

    def _seal(self) -> None:
        """The open journal becomes the next part."""
        assert self._journal is not None
        journal = self._journal_path(self._index)
        self._journal.close()
        self._journal = None
        rows = self._read_journal(journal)
        self._write_part(self._index, rows, self._numbered(PART))
        journal.unlink()
        _fsync_dir(self.path)
        self._index += 1
        self._pending = 0

    def _write_part(
        self, number: int, rows: list[dict[str, Any]], parts: Mapping[int, Path]
    ) -> Path:
        """Write part ``number`` from ``rows``, widening the schema of earlier parts first when
        these rows need it (a column seen for the first time, an integer column getting a
        fraction), so every part keeps the same schema."""
        import pyarrow.parquet as pq

        table = rows_to_table(rows)
        known = self._schema if self._schema is not None else self._known_schema(parts.values())
        schema = merge_schemas(known, table.schema)
        if known is not None and not schema.equals(known):
            for old in sorted(p for n, p in parts.items() if n != number):
                if not pq.read_schema(old).equals(schema):
                    self._atomic_write(old, conform(pq.read_table(old), schema))
        self._schema = schema
        target = self.path / f"part-{number:05d}.parquet"
        self._atomic_write(target, conform(table, schema))
        return target

    def _atomic_write(self, target: Path, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as fh:
            pq.write_table(
                table,
                fh,
                row_group_size=max(1, table.num_rows),
                compression=None if self.compression == "none" else self.compression,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(self.path)

    def _known_schema(self, parts: Any) -> pa.Schema | None:
        import pyarrow.parquet as pq

        schema = None
        for part in sorted(parts):
            schema = merge_schemas(schema, pq.read_schema(part))
        return schema

    def _read_journal(self, journal: Path) -> list[dict[str, Any]]:
        """The journal's rows; a torn last line (a crash mid-write) is moved aside."""
        data = journal.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fragment = data[end:]
            aside = journal.with_name(journal.stem + ".torn.txt")
            aside.write_bytes(fragment)
            self._warn(
                f"{journal.name} ended in a torn line (a crash mid-write); "
                f"moved its {len(fragment)} bytes to {aside}"
            )
            data = data[:end]
        rows = []
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a damaged line: its record has no row, so it runs again
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def _existing(self, parts: list[Path]) -> Iterator[Mapping[str, Any]]:
        import pyarrow.parquet as pq

        for part in parts:
            with pq.ParquetFile(part) as pf:
                names = pf.schema_arrow.names
                if "id" not in names:
                    continue
                wanted = [c for c in ("id", "status") if c in names]
                for batch in pf.iter_batches(batch_size=8192, columns=wanted):
                    yield from batch.to_pylist()


# The row's objects, stored as JSON text in a part (tables.py): objects again when read back.
NESTED = ("fields", "error", "response", "record")


def _nested(row: dict[str, Any]) -> dict[str, Any]:
    for key in NESTED:
        value = row.get(key)
        if isinstance(value, str):
            try:
                row[key] = json.loads(value)
            except ValueError:
                pass  # a plain string the row really held
    return row


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
