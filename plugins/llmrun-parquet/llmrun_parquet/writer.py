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

``rewrite`` (``llmrun run --retry-errors``, ``llmrun repost``) writes a whole new folder beside
the output and swaps the two folders (see its docstring).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from llmrun import ComponentContext, Problem, RecipeError, RowEdit, fsync_dir

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
        self._options, self._context = options, context  # for the folder a rewrite builds
        self._warn = context.warn
        self._journal: IO[str] | None = None
        self._pending = 0  # rows in the open journal
        self._index = 0  # number of the next part
        self._schema: pa.Schema | None = None

    # -- the Writer protocol ---------------------------------------------------------------

    def open(self) -> Iterator[Mapping[str, Any]]:
        """Seal what a crashed writer left, then return the rows already written (lazily)."""
        self._settle_rewrite()
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
        self._refuse_links()
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

    def _refuse_links(self) -> None:
        """The folder's files are opened by fixed names (a journal is appended to, read and
        sealed): a shared folder shipping ``_pending-00000.jsonl -> ~/.bashrc`` had rows
        appended to that file and its lines read into the output. RecipeError on any link."""
        links = sorted(e.path for e in os.scandir(self.path) if e.is_symlink())
        if links:
            raise RecipeError(
                [
                    Problem(
                        f"{links[0]} is a symbolic link (to {os.readlink(links[0])}): the "
                        "parquet writer writes only real files in its folder; remove it",
                        "output.path",
                    )
                ]
            )

    def read(self) -> Generator[Mapping[str, Any], None, None]:
        """The rows already written, read-only (``llmrun status``, ``plan``): the sealed parts,
        then the whole lines of journals not sealed yet; nothing is sealed or moved (the new
        folder of a rewrite a crash stopped before it took the output's name is read as the
        output: see ``rewrite``)."""
        import pyarrow.parquet as pq

        folder = self.path
        if not folder.is_dir():
            folder = self._aside("rewritten")
            if not folder.is_dir():
                return
        for _, part in sorted(self._numbered(PART, folder).items()):
            with pq.ParquetFile(part) as pf:
                for batch in pf.iter_batches(batch_size=8192):
                    for row in batch.to_pylist():
                        yield _nested(row)
        sealed = self._numbered(PART, folder)
        for number, journal in sorted(self._numbered(JOURNAL, folder).items()):
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

    def rewrite(self, edit: RowEdit, keep: Path) -> bool:
        """The output with each row as ``edit`` returns it (``llmrun.RewritableWriter``: what
        ``--retry-errors`` and ``repost`` do), rows read as ``read`` reads them. A folder
        cannot replace another in one rename, so:

        1. a writer like this one writes the new rows to ``.<name>.rewriting`` beside the
           output, in parts of ``row_group_size`` rows, each fsynced; the folder is renamed
           ``.<name>.rewritten`` once whole;
        2. the output folder (journals and all) is renamed to ``keep``;
        3. ``.<name>.rewritten`` is renamed to the output's name.

        A crash, or ``edit`` raising, before step 2 leaves the old output in place (the next
        ``open`` or ``rewrite`` removes a folder left aside); after step 2 the new output is
        whole, and the next ``open`` or ``rewrite`` ends step 3 if a crash stopped it
        (``read`` reads it meanwhile). A torn journal line (a crash mid-write) is not a row: it
        is left out of the new output and stays in the kept folder."""
        self._settle_rewrite()
        if not self.path.is_dir():
            return False
        building, built = self._aside("rewriting"), self._aside("rewritten")
        new = ParquetWriter({**self._options, "path": str(building)}, self._context)
        reading = self.read()
        changed, rows = False, list[Mapping[str, Any]]()
        try:
            try:
                new.open()
                for row in reading:
                    kept = edit(row)
                    changed = changed or kept is not row
                    if kept is not None:
                        rows.append(kept)
                    if len(rows) >= self.rows_per_part:
                        new.write(rows)  # sealed at once: a part of row_group_size rows
                        rows = []
                new.write(rows)
            finally:
                reading.close()  # its part files now, when edit raised too
                new.close()
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        if not changed:
            shutil.rmtree(building)
            return False
        building.rename(built)
        fsync_dir(self.path.parent)
        keep.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(keep)
        fsync_dir(keep.parent)
        built.rename(self.path)
        fsync_dir(self.path.parent)
        return True

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

    # -- rewrites --------------------------------------------------------------------------

    def _aside(self, stage: str) -> Path:
        """A folder beside the output where ``rewrite`` builds the new one (hidden: a reader
        of the output's parent folder never takes it for data)."""
        return self.path.with_name(f".{self.path.name}.{stage}")

    def _settle_rewrite(self) -> None:
        """End what a crash left of a ``rewrite``: a folder it was still writing is removed; a
        whole new folder takes the output's name if the old one was moved to its kept name
        already, else it is removed (the rewrite did not happen)."""
        shutil.rmtree(self._aside("rewriting"), ignore_errors=True)
        built = self._aside("rewritten")
        if not built.is_dir():
            return
        if self.path.exists():
            shutil.rmtree(built)
        else:
            built.rename(self.path)
            fsync_dir(self.path.parent)

    # -- parts -----------------------------------------------------------------------------

    def _journal_path(self, number: int) -> Path:
        return self.path / f"_pending-{number:05d}.jsonl"

    def _numbered(self, pattern: re.Pattern[str], folder: Path | None = None) -> dict[int, Path]:
        found = {}
        for entry in (folder or self.path).iterdir():
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
        fsync_dir(self.path)
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
        fsync_dir(self.path)

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
NESTED = ("fields", "error", "response", "record", "steps")


def _nested(row: dict[str, Any]) -> dict[str, Any]:
    for key in NESTED:
        value = row.get(key)
        if isinstance(value, str):
            try:
                row[key] = json.loads(value)
            except ValueError:
                pass  # a plain string the row really held
    return row
