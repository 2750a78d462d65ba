"""Line-oriented loaders: ``jsonl`` (one JSON object per line) and ``text`` (one record per
line). Both stream, read stdin with ``path: -``, and decompress ``.gz``/``.zst``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ...jsonio import loads
from ...values import ComponentContext, SourceRecord
from .sources import ENCODING_SCHEMA, ERRORS_SCHEMA, PATH_SCHEMA, FileLoader


class JsonlLoader(FileLoader):
    """One JSON object per line. Blank lines are skipped; a malformed line becomes an error
    row naming file and line."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {"path": PATH_SCHEMA, "encoding": ENCODING_SCHEMA, "errors": ERRORS_SCHEMA},
    }

    def records(self) -> Iterator[SourceRecord]:
        for lineno, (line, bad) in enumerate(self.source.lines(self.errors), 1):
            if not line.strip():
                continue
            where = f"{self.label}:{lineno}"
            if bad:
                yield SourceRecord(None, where, f"{where}: {bad}")
                continue
            try:
                data = loads(line)  # orjson; json's own message when invalid
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
        return _count_lines(self)


class TextLoader(FileLoader):
    """One record per line of text: ``{field: line}`` (the line ending removed). Blank lines
    are skipped unless ``keep_blank``; ``number`` adds the line number as a field (a stable
    id for files whose lines repeat)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": PATH_SCHEMA,
            "encoding": ENCODING_SCHEMA,
            "errors": ERRORS_SCHEMA,
            "field": {"type": "string", "minLength": 1, "default": "text"},
            "number": {
                "type": "string",
                "minLength": 1,
                "description": "Also put the line number (1-based) in this field.",
            },
            "keep_blank": {"type": "boolean", "default": False},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        self.field = str(options.get("field", "text"))
        self.number = options.get("number")
        self.keep_blank = bool(options.get("keep_blank", False))

    def records(self) -> Iterator[SourceRecord]:
        # Only \n ends a line (as count() sees it); a \r before it is dropped.
        for lineno, (line, bad) in enumerate(self.source.lines(self.errors), 1):
            text = line.removesuffix("\n").removesuffix("\r")
            if not self.keep_blank and not text.strip():
                continue
            if bad:
                where = f"{self.label}:{lineno}"
                yield SourceRecord(None, where, f"{where}: {bad}")
                continue
            data: dict[str, Any] = {self.field: text}
            if self.number:
                data[str(self.number)] = lineno
            yield SourceRecord(data, f"{self.label}:{lineno}")

    def count(self) -> int | None:
        return _count_lines(self, blank=self.keep_blank)


def _count_lines(loader: FileLoader, *, blank: bool = False) -> int | None:
    """Lines (non-blank ones unless ``blank``), read as bytes; None for stdin or no file."""
    if not loader.source.countable():
        return None
    try:
        with loader.source.binary() as fh:
            return sum(1 for line in fh if blank or not line.isspace())
    except OSError:
        return None
