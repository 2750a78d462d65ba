"""Built-in writers: ``jsonl`` (the default output and the source of truth for resume), and
``csv`` and ``json``, which ``llmrun export`` uses and a recipe may pick too (rows flattened to
dotted columns). All three read their rows back on ``open`` so a run resumes; ``jsonl`` also
reads them read-only (``read``) and rewrites them in place (``rewrite``)."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from llmrun import (
    ComponentContext,
    Register,
    RowEdit,
    flatten,
    fsync_dir,
    hookimpl,
    json_loads,
    link_or_copy,
    row_line,
)


class JsonlWriter:
    """One JSON object per line, appended. ``open`` repairs a torn last line left by a crash:
    the fragment is moved to ``<output>.llmrun/torn-*.txt`` (never silently dropped) and the
    file truncated to its last complete line."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {"path": {"type": "string", "description": "Output file (.jsonl)."}},
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        self._fh: IO[bytes] | None = None
        self._warn = context.warn

    def open(self) -> Iterator[Mapping[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        if self.path.exists():
            with open(self.path, "rb") as fh:
                for line in fh:
                    row = _row_of(line)
                    if row is not None:  # (a damaged line in the middle: its record runs again)
                        yield row
        # Binary: rows arrive encoded (jsonio.row_line writes a lone surrogate from "\ud800"
        # in the input as the JSON escape it came from, so the row stays valid JSON).
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def open_ids(self, start: int = 0) -> Iterator[tuple[list[bytes], int, int, list[float]]]:
        """``open`` for resume (``job.store.index_writer``): block by block, the UTF-8 bytes of
        each row's id, the ok and error row counts and the numeric ``cost_usd`` values, in
        file order (from byte ``start``: see ``read_ids``), then the file is open for
        appending.

        This writer owns the row format: every row it writes begins ``{"id":"<id>","status":
        "ok"|"error",`` and ends ``,"cost_usd":<n>,"cached":...,"recipe_hash":"..."}``
        (``job.rows.RowMaker`` fixes the key order), so a line of that shape is read at its two
        ends and never parsed whole: parsing each row was most of the time a resume of 10^6
        rows took (issue 14). Any other line (an id that holds an escape, a row written by
        hand or another tool, a damaged line) is parsed as ``open`` parses it and counted the
        same way. (A line damaged only between its two ends, which only an edit can do since
        rows are appended whole, counts as its id's row.)"""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        yield from self.read_ids(start)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def read_ids(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[list[bytes], int, int, list[float]]]:
        """What ``open_ids`` gives, read-only, from byte ``start`` (which must begin a line:
        the end of rows indexed before; ValueError otherwise) to byte ``end`` (the end of a
        line; the end of the file when None: a run may be appending past it)."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with fh:
            if start:
                fh.seek(start - 1)
                if fh.read(1) != b"\n":
                    raise ValueError(f"{self.path.name}: byte {start} does not begin a line")
            for lines in _line_blocks(fh, None if end is None else end - start):
                yield _index_lines(lines)

    def read(self) -> Iterator[Mapping[str, Any]]:
        """The whole rows already written, read-only (``status``, ``plan``, the report);
        ``unreadable`` counts the damaged lines left out, once read to the end."""
        self.unreadable = 0
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError):
            return
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    return  # a torn tail (a crash mid-write): not a row yet
                row = _row_of(line)
                if row is None:
                    self.unreadable += bool(line.strip())  # a blank line is no damaged row
                    continue
                yield row

    def rewrite(self, edit: RowEdit, keep: Path) -> bool:
        """The output with each row as ``edit`` returns it (``llmrun.RewritableWriter``: what
        ``--retry-errors`` and ``repost`` do). A row given back as it was is copied byte for
        byte, a changed one written as ``write`` writes rows, a damaged line copied as it was
        (counted in ``unreadable``). Under the run's lock:

        1. the new output is written to a temporary file beside the output, fsynced;
        2. the old output is hard-linked (copied where links are impossible) to ``keep``;
        3. the temporary file replaces the output in one atomic rename (a new file: the
           resume checkpoint and the viewer's index, which know the old one by its inode,
           see it is another), and both folders are fsynced.

        A crash before step 3, or ``edit`` raising, leaves the old output in place; after it,
        the new one. A torn last line (a crash mid-write) is not a row: it is left out of the
        new output and stays in the kept copy (one that lacks only its newline is a whole
        row, as ``open`` takes it)."""
        self.unreadable = 0
        tmp = self.path.with_name(f".{self.path.name}.rewrite.tmp")  # one rewrite at a time
        changed = False
        try:
            src = open(self.path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError):
            return False
        try:
            with src, open(tmp, "wb") as dst:
                for line in src:
                    whole = line.endswith(b"\n")
                    row = _row_of(line)
                    if row is None:
                        if whole:
                            self.unreadable += bool(line.strip())
                            dst.write(line)
                        continue
                    new = edit(row)
                    if new is row:
                        dst.write(line if whole else line + b"\n")
                        continue
                    changed = True
                    if new is not None:
                        dst.write(row_line(new))
                dst.flush()
                os.fsync(dst.fileno())
            if changed:
                link_or_copy(self.path, keep)
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        if changed:
            fsync_dir(self.path.parent)
            fsync_dir(keep.parent)
        return changed

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # Walk back to the last newline.
            pos = size
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                block = fh.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            fh.seek(pos)
            fragment = fh.read()
            if _row_of(fragment) is not None:  # only the newline was lost: the row is whole
                fh.write(b"\n")
                return
            aside = self.path.with_name(self.path.name + ".llmrun") / (
                f"torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.txt"
            )
            aside.parent.mkdir(parents=True, exist_ok=True)
            aside.write_bytes(fragment)
            fh.truncate(pos)
            self._warn(
                f"{self.path.name} ended in a torn line (a crash mid-write); "
                f"moved its {len(fragment)} bytes to {aside}"
            )

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        assert self._fh is not None, "open() first"
        self._fh.write(b"".join([row_line(r) for r in rows]))
        self._fh.flush()  # to the OS: survives a kill -9 of this process

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_HEAD = b'{"id":"'
_OK = b'","status":"ok",'
_ERROR = b'","status":"error",'
_COST = b',"cost_usd":'
_CACHED = b',"cached":'
# Bytes read at a time when indexing the output. A block is held three times over while it is
# cut into lines (its lines, and the previous block's tail joined to it): 1 MiB blocks held
# 4.5 MB at every checkpoint of a run; 128 KiB hold 0.6 MB and index 10^6 rows faster (1.97 s
# against 2.34, the CPU's caches).
BLOCK = 1 << 17


def _line_blocks(fh: IO[bytes], size: int | None = None) -> Iterator[list[bytes]]:
    """The file's lines (without their newline) a block at a time, up to ``size`` bytes from
    where it is (all when None); the repaired file ends with a newline, so every line is
    whole. A line longer than a block is read whole, as iterating the file does."""
    rest = b""
    while True:
        if size is None:
            block = fh.read(BLOCK)
        else:
            block = fh.read(min(BLOCK, size))
            size -= len(block)
        if not block:
            if rest:
                yield [rest]
            return
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()  # the start of a line the next block ends
        if lines:
            yield lines


def _index_lines(lines: list[bytes]) -> tuple[list[bytes], int, int, list[float]]:
    """The ids (UTF-8), ok and error counts and numeric costs of ``lines``: read at the two
    ends of a row of this writer's shape, parsed whole otherwise (see ``open_ids``)."""
    ids: list[bytes] = []
    costs: list[float] = []
    ok = error = 0
    for line in lines:
        # The shape: {"id":"<no quote, no backslash>","status":"ok|error", ... ,"cost_usd":
        # <null|number>,"cached": ... "}
        end = line.find(b'"', 7) if line.startswith(_HEAD) and line.endswith(b'"}') else -1
        at = line.rfind(_COST) if end > 7 else -1
        stop = line.find(b",", at + 12) if at > end else -1
        if stop > 0 and line.startswith(_CACHED, stop) and b"\\" not in line[7:end]:
            cost = _cost(line[at + 12 : stop])
            if cost is not _NOT_MINE:
                if line.startswith(_OK, end):
                    ok += 1
                elif line.startswith(_ERROR, end):
                    error += 1
                else:
                    cost = _NOT_MINE
            if cost is not _NOT_MINE:
                ids.append(line[7:end])
                if cost is not None:
                    costs.append(cost)
                continue
        # Not this writer's shape: parsed whole and counted as ``open`` + index_output do.
        try:
            row = json_loads(line)
        except ValueError:
            continue  # a damaged line in the middle: its record runs again
        if not isinstance(row, dict) or "id" not in row:
            continue
        ids.append(str(row["id"]).encode("utf-8", "surrogatepass"))
        if row.get("status") == "ok":
            ok += 1
        else:
            error += 1
        value = row.get("cost_usd")
        if isinstance(value, int | float):
            costs.append(value)
    return ids, ok, error, costs


_NOT_MINE: Any = object()


def _cost(token: bytes) -> Any:
    """A row's ``cost_usd`` as this writer writes it (null or a JSON number), else _NOT_MINE
    (float() alone would also read "inf", "1_0" or " 1")."""
    if token == b"null":
        return None
    if not (token[-1:].isdigit() and (token[:1].isdigit() or token[:1] == b"-")):
        return _NOT_MINE
    if b"_" in token:
        return _NOT_MINE
    try:
        return float(token)
    except ValueError:
        return _NOT_MINE


def _row_of(line: bytes) -> dict[str, Any] | None:
    """The row a line of the output holds, or None for a damaged line (not JSON, not an object
    with an id) or a blank one."""
    try:
        row = json_loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "id" in row else None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _truncate_to_last_newline(path: Path) -> int:
    """Cut a torn last line (a crash mid-write); return how many bytes were cut."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "rb+") as fh:
        fh.truncate(keep)
    return len(data) - keep


class CsvWriter:
    """Comma-separated values with a header row; nested values become dotted columns and lists
    JSON text. The columns are ``columns``, else the existing header, else the first row's."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "Output file (.csv)."},
            "delimiter": {"type": "string", "minLength": 1, "maxLength": 1, "default": ","},
            "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        self.delimiter = str(options.get("delimiter", ","))
        self.columns: list[str] | None = list(options["columns"]) if "columns" in options else None
        self._warn = context.warn
        self._warned = False
        self._fh: IO[str] | None = None
        self._csv: Any = None

    def open(self) -> Iterator[Mapping[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = _truncate_to_last_newline(self.path)
        if cut:
            self._warn(f"{self.path.name} ended in a torn line; cut its last {cut} bytes")
        has_rows = self.path.exists() and self.path.stat().st_size > 0
        if has_rows:
            with open(self.path, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter=self.delimiter)
                self.columns = self.columns or list(reader.fieldnames or [])
                yield from reader
        self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._fh, delimiter=self.delimiter, lineterminator="\n")
        self._header_done = has_rows

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        assert self._fh is not None, "open() first"
        for row in rows:
            flat = _flatten(row)
            if self.columns is None:
                self.columns = list(flat)
            if not self._header_done:
                self._csv.writerow(self.columns)
                self._header_done = True
            extra = [k for k in flat if k not in self.columns]
            if extra and not self._warned:
                self._warned = True
                self._warn(f"{self.path.name}: columns not in the header are left out: {extra}")
            self._csv.writerow([_cell(flat.get(c)) for c in self.columns])
        self._fh.flush()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class JsonWriter:
    """One JSON array, one row per line (``[``, rows, ``]``), so it is written as it goes and
    read back after a crash: ``open`` drops a torn last row and the array is closed again by
    ``close``. ``flatten: true`` turns nested values into dotted keys."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "Output file (.json)."},
            "flatten": {"type": "boolean", "default": False},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.path = (context.base_dir / str(options["path"])).resolve()
        self.flatten = bool(options.get("flatten", False))
        self._fh: IO[str] | None = None
        self._count = 0

    def open(self) -> Iterator[Mapping[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good = 0  # bytes up to the end of the last whole row
        if self.path.exists():
            with open(self.path, "rb") as fh:
                pos = 0
                for line in fh:
                    pos += len(line)
                    text = line.strip().lstrip(b",")
                    if text in (b"[", b""):
                        good = pos
                        continue
                    if text == b"]" or not line.endswith(b"\n"):
                        break
                    try:
                        row = json.loads(text)
                    except ValueError:
                        break
                    good = pos
                    self._count += 1
                    yield row
            with open(self.path, "rb+") as fh:
                fh.truncate(good)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if good == 0:
            self._fh.write("[\n")

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        assert self._fh is not None, "open() first"
        parts = []
        for row in rows:
            value = _flatten(row) if self.flatten else row
            sep = "," if self._count else ""
            parts.append(sep + json.dumps(value, ensure_ascii=False, default=str) + "\n")
            self._count += 1
        self._fh.write("".join(parts))
        self._fh.flush()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.write("]\n")
            self._fh.close()
            self._fh = None


def _flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    return flatten(row)


@hookimpl
def register_writers(register: Register) -> None:
    register("jsonl", JsonlWriter)
    register("csv", CsvWriter)
    register("json", JsonWriter)
