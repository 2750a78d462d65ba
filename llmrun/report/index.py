"""An index of an output file for the viewer: where each row starts, its status and error type.

Built once and kept in the state folder (``view-index.bin`` and ``view-index.json``), then only
extended while the output grows (rows are appended); a rewritten output (``repost``,
``--retry-errors``, ``--fresh``) is indexed again. 11 bytes a row: 10^6 rows take 11 MB, and a
page is found by a seek instead of a scan. The viewer reads rows through it and never holds
more than a page of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..job.store import RunState, atomic_write, open_state_file, read_state_file, refuse_links
from ..jsonio import loads as json_loads

VERSION = 2  # 2: the tail's hash
HEAD = 4096  # bytes of the output's start whose hash tells an appended file from a new one
ROW_CAP = 4 << 20  # bytes of one row the viewer reads; a longer row shows as too long
ROW_BYTES = 8 + 1 + 2  # a row in view-index.bin: its offset, status and error type
META_CAP = 4 << 20  # bytes of view-index.json read (its error types: 65,536 at most)
OK, ERROR, DAMAGED = 0, 1, 2
# Rows start {"id":"...","status":"..." (or, written before orjson, with spaces): see below.
_ROW_STARTS = ((b'{"id":"', b',"status":"'), (b'{"id": "', b', "status": "'))


def _head(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.blake2b(fh.read(HEAD), digest_size=16).hexdigest()


def _tail(path: Path, end: int) -> str:
    """The hash of the HEAD bytes before ``end``: an output only appended to keeps them. A file
    rewritten in place (or a new one on a reused inode) with the same start but other rows
    would otherwise reuse an index of rows that are gone."""
    with open(path, "rb") as fh:
        fh.seek(max(0, end - HEAD))
        return hashlib.blake2b(fh.read(min(end, HEAD)), digest_size=16).hexdigest()


class RowIndex:
    """Row ``i`` (0-based, in output order) starts at ``offsets[i]``; ``status[i]`` is OK,
    ERROR or DAMAGED (not a JSON object); ``etype[i]`` indexes ``types`` (error types)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.offsets = array("Q")
        self.status = array("B")
        self.etype = array("H")
        self.types: list[str] = [""]
        self.end = 0  # bytes of the output indexed (up to the end of the last full line)
        self._type_counts: dict[str, int] | None = None
        self._status_counts: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def open(cls, output: Path) -> RowIndex:
        """The index of ``output``: the cached one, extended to what was appended since (or
        built again when the file was rewritten); the cache is saved when it changed."""
        state = RunState(output)
        meta_path, bin_path = state.dir / "view-index.json", state.dir / "view-index.bin"
        index = cls(output)
        stat = output.stat()
        try:
            # The state folder may come with a shared output: its cache is checked, never
            # trusted (a size past the file or a row count past the index file would each make
            # the viewer read without bound; read_state_file refuses what is not a file).
            meta = json.loads(read_state_file(meta_path, META_CAP))
            end, rows = int(meta["end"]), int(meta["rows"])
            if (
                meta.get("version") == VERSION
                and meta.get("inode") == stat.st_ino
                and 0 <= end <= stat.st_size
                and rows >= 0
                and bin_path.stat().st_size == rows * ROW_BYTES
                and meta.get("head") == _head(output)
                and meta.get("tail") == _tail(output, end)
            ):
                index._load(bin_path, rows)
                index.types = [str(t) for t in meta["types"]]
                index.end = end
                if rows and (
                    max(index.status) > DAMAGED
                    or max(index.etype) >= len(index.types)
                    or max(index.offsets) >= end
                ):
                    raise ValueError("an index entry points past the output or its types")
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            index = cls(output)
        before = index.end
        index._extend()
        if index.end != before or not meta_path.exists():
            index._save(state, meta_path, bin_path)
        return index

    def _load(self, path: Path, rows: int) -> None:
        with open_state_file(path) as fh:
            self.offsets.fromfile(fh, rows)
            self.status.fromfile(fh, rows)
            self.etype.fromfile(fh, rows)

    def _save(self, state: RunState, meta_path: Path, bin_path: Path) -> None:
        try:
            refuse_links(state.dir)
        except RecipeError:
            return  # a state folder that is or holds a link: no cache is written through it
        state.dir.mkdir(parents=True, exist_ok=True)
        tmp = bin_path.with_name(f".{bin_path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            self.offsets.tofile(fh)
            self.status.tofile(fh)
            self.etype.tofile(fh)
        os.replace(tmp, bin_path)
        meta = {
            "version": VERSION,
            "inode": self.output.stat().st_ino,
            "head": _head(self.output),
            "tail": _tail(self.output, self.end),
            "end": self.end,
            "rows": len(self),
            "types": self.types,
        }
        atomic_write(meta_path, json.dumps(meta) + "\n")

    def _extend(self) -> None:
        """Index the full lines after ``end`` (a torn last line waits for its newline)."""
        codes = {t: i for i, t in enumerate(self.types)}
        with open(self.output, "rb") as fh:
            fh.seek(self.end)
            offset = self.end
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                status, etype = self._classify(line)
                code = codes.get(etype)
                if code is None:
                    if len(self.types) >= 65535:  # an array('H') cell: lump the rest
                        etype = "(other)"
                    code = codes.setdefault(etype, len(self.types))
                    if code == len(self.types):
                        self.types.append(etype)
                self.offsets.append(start)
                self.status.append(status)
                self.etype.append(code)
            self.end = offset

    @staticmethod
    def _classify(line: bytes) -> tuple[int, str]:
        # The writer puts "id" (a string) first and "status" second. Inside a JSON string a
        # quote is always escaped, so the first `,"status":"` is the key itself: an ok row is
        # known without parsing it. Anything else is parsed. Rows are compact (orjson); those
        # written before it had a space after each `:` and `,`.
        for start, status_at in _ROW_STARTS:
            if line.startswith(start):
                at = line.find(status_at)
                if at > 0 and line.startswith(b'ok"', at + len(status_at)):
                    return OK, ""
                break
        try:
            row = json_loads(line)
        except ValueError:
            return DAMAGED, ""
        if not isinstance(row, dict):
            return DAMAGED, ""
        if row.get("status") == "ok":
            return OK, ""
        error = row.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        return ERROR, str(kind or "unknown")[:100]

    # -- reading ------------------------------------------------------------------------------

    def select(self, status: str = "", etype: str = "") -> range | list[int]:
        """Row numbers with the status (``ok``, ``error``, ``damaged``) and error type."""
        if not status and not etype:
            return range(len(self))
        want_status = {"ok": OK, "error": ERROR, "damaged": DAMAGED}.get(status)
        if status and want_status is None:
            return []
        want_type = self.types.index(etype) if etype and etype in self.types else None
        if etype and want_type is None:
            return []
        out: list[int] = []
        if want_type is not None:
            for i, t in enumerate(self.etype):
                if t == want_type and (want_status is None or self.status[i] == want_status):
                    out.append(i)
            return out
        return [i for i, s in enumerate(self.status) if s == want_status]

    def type_counts(self) -> dict[str, int]:
        """Rows by error type, most first (counted once: an index does not change)."""
        if self._type_counts is None:
            counts = Counter(self.etype)
            self._type_counts = {self.types[i]: n for i, n in counts.most_common() if i and n}
        return self._type_counts

    def status_counts(self) -> dict[str, int]:
        if self._status_counts is None:
            self._status_counts = {
                name: self.status.count(code)
                for name, code in (("ok", OK), ("error", ERROR), ("damaged", DAMAGED))
            }
        return self._status_counts

    def read(self, rows: list[int] | range) -> Iterator[tuple[int, dict[str, Any] | None, int]]:
        """(row number, row or None when it cannot be read, bytes) for each row asked for."""
        with open(self.output, "rb") as fh:
            for i in rows:
                start = self.offsets[i]
                end = self.offsets[i + 1] if i + 1 < len(self) else self.end
                size = end - start
                if size > ROW_CAP:
                    yield i, None, size
                    continue
                fh.seek(start)
                try:
                    row = json.loads(fh.read(size))
                except ValueError:
                    row = None
                yield i, row if isinstance(row, dict) else None, size
