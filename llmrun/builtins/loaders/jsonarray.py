"""The ``json`` loader: records from a JSON array (the whole document, or the array under
``key``), read element by element so a large file never sits in memory whole.

A small incremental reader over ``json.JSONDecoder.raw_decode``: text is read in chunks, and each
element is decoded once the buffer holds all of it. Values beside the path to the array (other
keys of the enclosing objects) are decoded and dropped, so they should be small. A malformed
element cannot be stepped over (where the next one starts is unknown), so it becomes one error
row naming file and line, and reading stops there; the records before it are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import IO, Any, ClassVar

from llmrun import ComponentContext, SourceRecord

from .sources import ENCODING_SCHEMA, PATH_SCHEMA, FileLoader

CHUNK = 1 << 16
MAX_ELEMENT = 1 << 28  # characters of one element before giving up on it
WHITESPACE = " \t\n\r"


class JsonError(ValueError):
    """The document is not what the loader expects, at a known line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _Reader:
    """A buffered cursor over a text stream, keeping track of the line it is on."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.buf = ""
        self.pos = 0
        self.line = 1  # the line of self.pos
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in WHITESPACE:
                if self.buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, char: str, what: str) -> None:
        found = self.peek()
        if found != char:
            shown = repr(found) if found else "the end of the file"
            raise JsonError(self.line, f"expected {what}, found {shown}")
        self.pos += 1

    def value(self) -> Any:
        """Decode the next value, reading more text until it is complete."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > MAX_ELEMENT:
                    raise JsonError(self.line, f"a value over {MAX_ELEMENT:,} characters") from None
                if self._more():
                    continue
                line = self.line + self.buf.count("\n", self.pos, exc.pos)
                raise JsonError(line, f"not valid JSON ({exc.msg})") from None
            # A number at the end of the buffer may go on in the next chunk.
            if end == len(self.buf) and not self.eof and self._more():
                continue
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return value


class JsonLoader(FileLoader):
    """Records from a JSON array: the document itself, or the array at ``key`` (a dotted path
    through objects, e.g. ``data.items``). Each element must be an object."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": PATH_SCHEMA,
            "encoding": ENCODING_SCHEMA,
            "key": {
                "type": "string",
                "minLength": 1,
                "description": "Dotted path to the array of records inside the top-level "
                "object (e.g. `data.items`). Default: the document is the array.",
            },
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        key = options.get("key")
        self.key_path = [] if key is None else str(key).split(".")

    def records(self) -> Iterator[SourceRecord]:
        with self.source.text() as fh:
            reader = _Reader(fh)
            index = 0
            try:
                self._descend(reader)
                reader.expect("[", "an array of records")
                if reader.peek() == "]":
                    return
                while True:
                    reader.peek()  # to the element's first character: its line
                    where = f"{self.label}:{reader.line}"
                    item = reader.value()
                    index += 1
                    if isinstance(item, dict):
                        yield SourceRecord(item, where)
                    else:
                        yield SourceRecord(
                            None,
                            where,
                            f"{where}: expected a JSON object, got {type(item).__name__}",
                        )
                    if reader.peek() == "]":
                        return
                    reader.expect(",", "',' or ']' after a record")
            except JsonError as exc:
                where = f"{self.label}:{exc.line}"
                yield SourceRecord(
                    None, where, f"{where}: {exc} (record {index + 1}; reading stopped here)"
                )

    def _descend(self, reader: _Reader) -> None:
        """Move the reader to the start of the array at ``key``."""
        for depth, name in enumerate(self.key_path):
            at = ".".join(self.key_path[: depth + 1])
            reader.expect("{", f"an object holding {at!r}")
            while True:
                if reader.peek() == "}":
                    raise JsonError(reader.line, f"no key {at!r}")
                found = reader.value()
                reader.expect(":", "':' after a key")
                if found == name:
                    break
                reader.value()  # another key's value: read and dropped
                if reader.peek() == ",":
                    reader.pos += 1
