"""Opening a loader's source: a local file (plain, ``.gz``, ``.zst``) or ``-`` for stdin.

Everything here streams: files are read through the decompressor as they are consumed, never
whole. ``.zst`` needs the optional ``zstd`` extra (``pip install 'llmrun[zstd]'``).
"""

from __future__ import annotations

import codecs
import gzip
import io
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, cast

from llmrun import ComponentContext, Problem, RecipeError

STDIN = "-"
READ_BUFFER = 1 << 20  # bytes read from an input file at a time
PATH_SCHEMA = {
    "type": "string",
    "description": "Input file, relative to the recipe (`-` reads stdin; .gz and .zst are "
    "decompressed as they are read).",
}
ENCODING_SCHEMA = {"type": "string", "default": "utf-8"}
ERRORS_SCHEMA = {
    "enum": ["strict", "replace"],
    "default": "strict",
    "description": "A line that is not valid UTF-8: an error row naming file:line (strict), "
    "or read with U+FFFD in place of the bad bytes (replace).",
}


def _zstd_reader(raw: IO[bytes], label: str) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise RecipeError(
            [
                Problem(
                    f"{label} is zstd-compressed: install the zstd extra "
                    "(pip install 'llmrun[zstd]') to read it",
                    "data.path",
                )
            ]
        ) from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    # The stream reader has no readline; a buffer gives line iteration for counting.
    return cast(IO[bytes], io.BufferedReader(reader))


class Source:
    """One input stream named in a recipe: a path (resolved against the recipe) or stdin."""

    def __init__(self, given: str, context: ComponentContext, encoding: str = "utf-8") -> None:
        self.is_stdin = given == STDIN
        self.path = None if self.is_stdin else (context.base_dir / given).resolve()
        self.label = "<stdin>" if self.is_stdin else Path(given).name
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise RecipeError(
                [Problem(f"unknown encoding {encoding!r}", "data.encoding")]
            ) from None
        # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark spreadsheet programs
        # write, which would otherwise end up in the first field's name or break line 1.
        self.encoding = "utf-8-sig" if codec == "utf-8" else encoding
        suffix = "" if self.path is None else self.path.suffix.lower()
        self.compression = {".gz": "gzip", ".zst": "zstd"}.get(suffix)
        if self.compression == "zstd":
            # Fail at start-up, naming the extra, rather than on the first read.
            try:
                import zstandard  # noqa: F401
            except ImportError:
                _zstd_reader(io.BytesIO(), self.label)

    @contextmanager
    def binary(self) -> Iterator[IO[bytes]]:
        """The decompressed bytes."""
        if self.path is None:
            yield sys.stdin.buffer  # never closed: it is not ours
            return
        with ExitStack() as stack:
            # Read a MiB at a time: the default buffer (4 KiB here) cost a system call for every
            # few lines, twice over (the count and the records).
            raw: IO[bytes] = stack.enter_context(open(self.path, "rb", buffering=READ_BUFFER))
            if self.compression == "gzip":
                gz = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
                raw = cast(IO[bytes], gz)
            elif self.compression == "zstd":
                raw = stack.enter_context(_zstd_reader(raw, self.label))
            yield raw

    def lines(self, errors: str = "strict") -> Iterator[tuple[str, str | None]]:
        """Each line, ending kept, and why it is not valid text (None when it is). UTF-8 is
        decoded line by line, so a bad byte is told at its line; with ``errors: replace`` it
        becomes U+FFFD and the line counts as valid. Other encodings are decoded as a stream
        (undecodable bytes become U+FFFD)."""
        if self.encoding != "utf-8-sig":
            with self.text(newline="\n") as fh:
                for line in fh:
                    yield line, None
            return
        for chunk in self.utf8_lines():
            yield decode_line(chunk, errors)

    def utf8_lines(self, start: int = 0) -> Iterator[bytes]:
        """Each line as bytes, ending kept, the byte-order mark left out: what ``lines`` decodes
        for a UTF-8 source; from byte ``start`` of a plain file (``seekable``)."""
        with self.binary() as raw:
            first = not start
            if start:
                assert self.seekable(), "only a plain file starts past its beginning"
                raw.seek(start)
            for chunk in raw:
                if first:
                    chunk, first = chunk.removeprefix(codecs.BOM_UTF8), False
                yield chunk

    @contextmanager
    def text(self, newline: str | None = None) -> Iterator[IO[str]]:
        """The decoded text (undecodable bytes become U+FFFD, never a crash)."""
        with self.binary() as raw:
            wrapper = io.TextIOWrapper(
                raw,
                encoding=self.encoding,
                errors="replace",
                newline=newline,
            )
            try:
                yield wrapper
            finally:
                wrapper.detach()  # the binary stream is closed (or, for stdin, kept) above

    def seekable(self) -> bool:
        """A plain local file: reading may start at a byte offset."""
        return self.path is not None and self.compression is None

    def countable(self) -> bool:
        """Whether counting may read the source a second time (stdin can be read once)."""
        return self.path is not None


def decode_line(chunk: bytes, errors: str = "strict") -> tuple[str, str | None]:
    """One line of a UTF-8 source as text, and why it is not valid UTF-8 (None when it is)."""
    try:
        return chunk.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = chunk.decode("utf-8", "replace")
        if errors == "replace":
            return text, None
        return (
            text,
            (
                f"not valid UTF-8 (byte 0x{chunk[exc.start]:02x} at byte "
                f"{exc.start + 1} of the line); fix the file, or set data.errors: "
                "replace to read such bytes as U+FFFD"
            ),
        )


class FileLoader:
    """Shared by loaders of one file (or stdin)."""

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.source = Source(str(options["path"]), context, str(options.get("encoding", "utf-8")))
        self.errors = str(options.get("errors", "strict"))
        self.label = self.source.label
        self.path = self.source.path
        self.encoding = self.source.encoding

    def count(self) -> int | None:
        """Unknown unless a loader knows better."""
        return None
