"""Built-in loaders: ``jsonl`` and ``csv``. Both stream; neither reads a whole file."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import Problem, RecipeError
from ..hookspecs import Register, hookimpl
from ..values import ComponentContext, SourceRecord

MAX_CELL = 1 << 30  # characters in one CSV cell
PATH_SCHEMA = {"type": "string", "description": "Input file, relative to the recipe."}


class FileLoader:
    """Shared by loaders of one local file."""

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        encoding = str(options.get("encoding", "utf-8"))
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise RecipeError(
                [Problem(f"unknown encoding {encoding!r}", "data.encoding")]
            ) from None
        # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark spreadsheet programs
        # write, which would otherwise end up in the first field's name or break line 1.
        self.encoding = "utf-8-sig" if codec == "utf-8" else encoding
        self.label = Path(str(options["path"])).name


class JsonlLoader(FileLoader):
    """One JSON object per line. Blank lines are skipped; a malformed line becomes an error
    row naming file and line."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {"path": PATH_SCHEMA, "encoding": {"type": "string", "default": "utf-8"}},
    }

    def records(self) -> Iterator[SourceRecord]:
        with open(self.path, encoding=self.encoding, errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{self.label}:{lineno}"
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    yield SourceRecord(None, where, f"{where}: not valid JSON ({exc})")
                    continue
                if not isinstance(data, dict):
                    yield SourceRecord(
                        None, where, f"{where}: expected a JSON object, got {type(data).__name__}"
                    )
                    continue
                yield SourceRecord(data, where)

    def count(self) -> int | None:
        """Non-blank lines, as ``records()`` yields them (binary, without decoding JSON)."""
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for line in fh if not line.isspace())
        except OSError:
            return None


class CsvLoader(FileLoader):
    """A CSV (or TSV) file with a header row; every value is a string. A row with more or
    fewer cells than the header becomes an error row."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": PATH_SCHEMA,
            "encoding": {"type": "string", "default": "utf-8"},
            "delimiter": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1,
                "description": "Default: tab for .tsv files, else comma.",
            },
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        default = "\t" if self.path.suffix.lower() == ".tsv" else ","
        self.delimiter = str(options.get("delimiter", default))

    def records(self) -> Iterator[SourceRecord]:
        # The default limit (128 KiB per cell) is smaller than documents people send to models.
        csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
        with open(self.path, encoding=self.encoding, errors="replace", newline="") as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            header = next((row for row in reader if row), None)  # blank lines before it too
            if header is None:
                return
            width = len(header)
            line = reader.line_num
            for cells in _rows(reader):
                where = f"{self.label}:{line + 1}"
                line = reader.line_num
                if isinstance(cells, csv.Error):
                    yield SourceRecord(None, where, f"{where}: {cells}")
                    continue
                if not cells:
                    continue
                if len(cells) != width:
                    yield SourceRecord(
                        None, where, f"{where}: {len(cells)} cells where the header has {width}"
                    )
                    continue
                yield SourceRecord(dict(zip(header, cells, strict=True)), where)

    def count(self) -> int | None:
        """Rows after the header, parsed as ``records()`` does: a quoted cell may span lines."""
        csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
        try:
            with open(self.path, encoding=self.encoding, errors="replace", newline="") as fh:
                rows = sum(cells != [] for cells in _rows(csv.reader(fh, delimiter=self.delimiter)))
        except OSError:
            return None
        return max(0, rows - 1)


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """The reader's rows, and the error for a row it could not parse (the reader goes on)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc


@hookimpl
def register_loaders(register: Register) -> None:
    register("jsonl", JsonlLoader)
    register("csv", CsvLoader)
