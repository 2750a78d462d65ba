"""Built-in loaders: ``jsonl`` and ``csv``. Both stream; neither reads a whole file."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..hookspecs import Register, hookimpl
from ..values import ComponentContext, SourceRecord

PATH_SCHEMA = {"type": "string", "description": "Input file, relative to the recipe."}


class FileLoader:
    """Shared by loaders of one local file."""

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        self.encoding = str(options.get("encoding", "utf-8"))
        self.label = Path(str(options["path"])).name

    def count(self) -> int | None:
        """Lines in the file (fast: counts newlines in binary blocks)."""
        n = 0
        last = b"\n"
        try:
            with open(self.path, "rb") as fh:
                while block := fh.read(1 << 20):
                    n += block.count(b"\n")
                    last = block[-1:]
        except OSError:
            return None
        return n + (last != b"\n")


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
        # Blank lines are not records; counting them would only skew the ETA slightly.
        return super().count()


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
        with open(self.path, encoding=self.encoding, errors="replace", newline="") as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            line = reader.line_num
            for cells in reader:
                where = f"{self.label}:{line + 1}"
                line = reader.line_num
                if not cells:
                    continue
                if len(cells) != width:
                    yield SourceRecord(
                        None, where, f"{where}: {len(cells)} cells where the header has {width}"
                    )
                    continue
                yield SourceRecord(dict(zip(header, cells, strict=True)), where)

    def count(self) -> int | None:
        lines = super().count()
        return None if lines is None else max(0, lines - 1)


@hookimpl
def register_loaders(register: Register) -> None:
    register("jsonl", JsonlLoader)
    register("csv", CsvLoader)
