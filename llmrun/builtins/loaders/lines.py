"""Line-oriented loaders: ``jsonl`` (one JSON object per line) and ``text`` (one record per
line). Both stream, read stdin with ``path: -``, and decompress ``.gz``/``.zst``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from llmrun import ComponentContext, SourceRecord, json_loads

from .sources import ENCODING_SCHEMA, ERRORS_SCHEMA, PATH_SCHEMA, FileLoader, decode_line


class JsonlLoader(FileLoader):
    """One JSON object per line. Blank lines are skipped; a malformed line becomes an error
    row naming file and line."""

    read_to: tuple[int, int] | None = None  # where ids_first's reading ended (see there)
    # The end of the last line ids_first gave (None: that line had no newline yet).
    read_at: tuple[int, int] | None = (0, 0)

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
            yield self._record(lineno, line, bad)

    def _record(self, lineno: int, line: str, bad: str | None) -> SourceRecord:
        where = f"{self.label}:{lineno}"
        if bad:
            return SourceRecord(None, where, f"{where}: {bad}")
        try:
            data = json_loads(line)  # orjson; json's own message when invalid
        except ValueError as exc:
            return SourceRecord(None, where, f"{where}: not valid JSON ({exc})")
        if not isinstance(data, dict):
            return SourceRecord(
                None, where, f"{where}: expected a JSON object, got {type(data).__name__}"
            )
        return SourceRecord(data, where)

    def ids_first(
        self, id_field: str, start: tuple[int, int] | None = None
    ) -> Iterator[tuple[str | None, int, bytes]] | None:
        """For resume (``job.records.selected`` with ``skip``): each non-blank line as
        ``(id, line number, line)``, the id told without parsing the line when that is
        certain, else None; ``record_at`` makes the record of a line. None when this source
        cannot do it (not UTF-8, or an id field that is a dotted path).

        A line's id is told when the line is one JSON object whose first key is the id field,
        a string without escapes or a plain integer, and the key is written nowhere else in
        the line (a repeated key would be read as its last value) nor can be (no ``\\u``
        escape anywhere). Otherwise the line is parsed whole, as ``records`` does. A line told
        this way whose id is done is skipped unparsed: a damaged rest of such a line is not
        reported, as its row is already in the output.

        ``start`` (byte offset, lines before it), for a ``seekable`` source: read from there
        (the resume checkpoint, job/checkpoint.py). Once every line is read, ``read_to`` holds
        the same pair for the end of the last whole line; while reading, ``read_at`` holds it
        for the last line given, None when that line has no newline (the checkpoints a run
        saves as it goes)."""
        plain = id_field and not any(c in id_field for c in '."\\/') and id_field.isprintable()
        if self.encoding != "utf-8-sig" or not plain:
            return None  # (a key with " \\ / or a control character has two spellings)
        key = json.dumps(id_field, ensure_ascii=False).encode("utf-8")
        head = re.compile(
            rb"[ \t\r]*\{[ \t\r]*" + re.escape(key) + rb"[ \t\r]*:[ \t\r]*"
            rb'(?:"([^"\\\x00-\x1f]+)"|(0|-?[1-9][0-9]{0,17}))[ \t\r]*[,}]'
        ).match
        if start is not None and not self.seekable():
            return None
        return self._ids_first(head, key, start or (0, 0))

    def seekable(self) -> bool:
        """Whether ``ids_first`` can start past the beginning (a plain local UTF-8 file)."""
        return self.encoding == "utf-8-sig" and self.source.seekable()

    def _ids_first(
        self,
        head: Callable[[bytes], re.Match[bytes] | None],
        key: bytes,
        start: tuple[int, int],
    ) -> Iterator[tuple[str | None, int, bytes]]:
        self.read_to = None
        self.read_at = start
        offset, lineno = start
        whole = start  # the end of the last line read whole (with its newline)
        for line in self.source.utf8_lines(offset):
            lineno += 1
            offset += len(line)
            if line.endswith(b"\n"):
                whole = self.read_at = (offset, lineno)
            else:
                self.read_at = None  # the last line, without its newline: it may yet grow
            if line.isspace():
                continue  # blank (records() skips more: record_at tells the rest)
            rid: str | None = None
            found = head(line)
            if (
                found is not None
                and line.count(key) == 1
                and b"\\u" not in line
                and line.rstrip().endswith(b"}")
            ):
                try:
                    rid = (found[1] or found[2]).decode("utf-8")
                    if not line.isascii():
                        line.decode("utf-8")  # an invalid line is an error row: parse it
                except UnicodeDecodeError:
                    rid = None
            yield rid, lineno, line
        # A last line without its newline may yet grow: no end to start from next time.
        self.read_to = whole if whole == (offset, lineno) else None

    def record_at(self, lineno: int, line: bytes) -> SourceRecord | None:
        """The record of a line ``ids_first`` gave, as ``records`` makes it (None for a line
        ``records`` skips as blank)."""
        text, bad = decode_line(line, self.errors)
        if not text.strip():
            return None
        return self._record(lineno, text, bad)

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
