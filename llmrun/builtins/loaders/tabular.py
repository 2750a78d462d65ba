"""The ``csv`` loader (also for ``.tsv``): a header row or explicit column names, a dialect,
and optional types per column. Streams; a row that cannot be used becomes an error row."""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar

from llmrun import ComponentContext, Problem, RecipeError, SourceRecord

from .sources import ENCODING_SCHEMA, ERRORS_SCHEMA, PATH_SCHEMA, FileLoader

MAX_CELL = 1 << 30  # characters in one CSV cell
TRUE = frozenset({"true", "yes", "y", "1", "t"})
FALSE = frozenset({"false", "no", "n", "0", "f"})


def _to_bool(cell: str) -> bool:
    word = cell.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(f"not a boolean (true/false, yes/no, 1/0): {cell!r}")


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": lambda cell: int(cell.strip()),
    "float": lambda cell: float(cell.strip()),
    "bool": _to_bool,
    "json": json.loads,
}


class CsvLoader(FileLoader):
    """A CSV (or TSV) file. Values are strings unless ``types`` says otherwise; an empty cell
    of a typed column is null. A row with more or fewer cells than there are columns, or a
    cell its type rejects, becomes an error row naming file and line."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": PATH_SCHEMA,
            "encoding": ENCODING_SCHEMA,
            "errors": ERRORS_SCHEMA,
            "delimiter": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1,
                "description": "Default: tab for .tsv files, else the dialect's (comma).",
            },
            "dialect": {
                "enum": ["excel", "excel-tab", "unix"],
                "default": "excel",
                "description": "Python csv dialect: quoting and line-ending rules.",
            },
            "quotechar": {"type": "string", "minLength": 1, "maxLength": 1},
            "header": {
                "type": "boolean",
                "description": "Whether the first row names the columns. Default: true, "
                "false when `columns` is given.",
            },
            "columns": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Column names (with `header: true`, they replace the header's).",
            },
            "types": {
                "type": "object",
                "additionalProperties": {"enum": sorted(CONVERTERS)},
                "description": "Column name -> int, float, bool, json or str (the default).",
            },
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        name = "" if self.path is None else self.path.name.lower().removesuffix(".gz")
        name = name.removesuffix(".zst")
        self.dialect = str(options.get("dialect", "excel"))
        fmt: dict[str, Any] = {}
        if "delimiter" in options:
            fmt["delimiter"] = str(options["delimiter"])
        elif name.endswith(".tsv"):
            fmt["delimiter"] = "\t"
        if "quotechar" in options:
            fmt["quotechar"] = str(options["quotechar"])
        self.format = fmt
        columns = options.get("columns")
        self.columns = None if columns is None else [str(c) for c in columns]
        self.header = bool(options.get("header", self.columns is None))
        self.types = {str(k): CONVERTERS[str(v)] for k, v in (options.get("types") or {}).items()}
        self.warn = context.warn
        if self.columns is not None:
            unknown = sorted(set(self.types) - set(self.columns))
            if unknown:
                raise RecipeError(
                    [Problem(f"types names unknown column(s): {', '.join(unknown)}", "data.types")]
                )

    def _reader(self, fh: Any) -> Any:
        # The default limit (128 KiB per cell) is smaller than documents people send to models.
        csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
        return csv.reader(fh, dialect=self.dialect, **self.format)

    def records(self) -> Iterator[SourceRecord]:
        # Lines are decoded one by one (Source.lines) so that a bad byte is told at its row;
        # the numbers of bad lines wait here until the reader has passed them.
        bad: deque[tuple[int, str]] = deque()

        def lines() -> Generator[str, None, None]:
            for lineno, (line, why) in enumerate(self.source.lines(self.errors), 1):
                if why:
                    bad.append((lineno, why))
                yield line

        fh = lines()
        try:
            reader = self._reader(fh)
            names = self.columns
            if self.header:
                first = next((row for row in reader if row), None)  # blank lines before it too
                if first is None:
                    return
                names = names or first
            assert names is not None
            unknown = sorted(set(self.types) - set(names))
            if unknown:  # a typo would otherwise leave the column a string, silently
                self.warn(f"data.types names column(s) {self.label} lacks: {', '.join(unknown)}")
            width = len(names)
            line = reader.line_num
            while bad and bad[0][0] <= line:  # in the header: its names keep U+FFFD
                at, message = bad.popleft()
                self.warn(f"{self.label}:{at}: the header is {message}")

            for cells in _rows(reader):
                where = f"{self.label}:{line + 1}"
                line = reader.line_num
                why = None
                while bad and bad[0][0] <= line:
                    _, found = bad.popleft()
                    why = why or found
                if why:
                    yield SourceRecord(None, where, f"{where}: {why}")
                    continue
                if isinstance(cells, csv.Error):
                    yield SourceRecord(None, where, f"{where}: {cells}")
                    continue
                if not cells:
                    continue
                if len(cells) != width:
                    yield SourceRecord(
                        None,
                        where,
                        f"{where}: {len(cells)} cells where the "
                        f"{'header has' if self.columns is None else 'columns are'} {width}",
                    )
                    continue
                data: dict[str, Any] = dict(zip(names, cells, strict=True))
                error = self._convert(data)
                if error:
                    yield SourceRecord(None, where, f"{where}: {error}")
                    continue
                yield SourceRecord(data, where)
        finally:
            fh.close()  # the file closes now, not at garbage collection

    def _convert(self, data: dict[str, Any]) -> str | None:
        for column, convert in self.types.items():
            if column not in data:
                continue
            cell = data[column]
            if cell == "":
                data[column] = None
                continue
            try:
                data[column] = convert(cell)
            except ValueError as exc:
                return f"column {column!r}: {exc}"
        return None

    def count(self) -> int | None:
        """Rows (after the header), parsed as ``records()`` does: a quoted cell may span lines."""
        if not self.source.countable():
            return None
        try:
            with self.source.text(newline="") as fh:
                rows = sum(cells != [] for cells in _rows(self._reader(fh)))
        except OSError:
            return None
        return max(0, rows - 1) if self.header else rows


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """The reader's rows, and the error for a row it could not parse (the reader goes on)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc
