"""The built-in ``jsonl`` writer: the default output and the source of truth for resume."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, ClassVar

from ..hookspecs import Register, hookimpl
from ..store import now_iso
from ..values import ComponentContext


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
        self._fh: IO[str] | None = None
        self._warn = context.warn

    def open(self) -> Iterator[Mapping[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a damaged line in the middle: its record runs again
                    if isinstance(row, dict) and "id" in row:
                        yield row
        # A lone surrogate (from "\ud800" in the input JSON) cannot be UTF-8: written as the
        # JSON escape it came from, the row stays valid JSON instead of failing the run.
        self._fh = open(  # noqa: SIM115 - closed in close()
            self.path, "a", encoding="utf-8", errors="backslashreplace"
        )

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
            if _is_row(fragment):  # only the newline was lost: the row is whole, keep it
                fh.write(b"\n")
                return
            aside = self.path.with_name(self.path.name + ".llmrun") / (
                f"torn-{now_iso().replace(':', '')}.txt"
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
        self._fh.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        self._fh.flush()  # to the OS: survives a kill -9 of this process

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _is_row(data: bytes) -> bool:
    try:
        row = json.loads(data)
    except ValueError:
        return False
    return isinstance(row, dict) and "id" in row


@hookimpl
def register_writers(register: Register) -> None:
    register("jsonl", JsonlWriter)
