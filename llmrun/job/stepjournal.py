"""The steps a record has finished before its row is written (``steps:`` recipes).

A record's row is written once, when its last step is done; a kill before that would lose
its finished steps, and the next run would pay for them again. So each step that succeeds is
appended here at once (one line, handed to the OS before the next step's call goes out), and
the next run takes the record up at its first unfinished step.

``<output>.llmrun/steps.jsonl``, one object a line: ``{"id", "step", "hash", "result"}``.
``hash`` is the step's (recipe/steps.py; the result and the row's step carry it too): a line
of a step the recipe has changed since is ignored. A line is obsolete once its record has a
row (the row carries every step), so the file is rewritten with only the unfinished records'
lines when a run opens and when it ends; in between it grows by one line a finished step. A
torn last line (a kill mid-write) is not a line. A hostile or corrupt line is skipped: the
worst it can do is cost a call again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..durable import fsync_dir
from .store import open_state_file

MAX_LINE = 64 * 1024 * 1024  # a longer line is not one this module wrote


class StepJournal:
    """The finished steps of records without a row yet, on disk and in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: dict[str, dict[str, dict[str, Any]]] = {}  # id -> step -> result
        self._fd: int | None = None

    def open(
        self,
        hashes: Mapping[str, str],
        done: Container[str],
        seeds: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """Read what earlier runs finished of records that are not ``done`` and whose step is
        unchanged (``hashes``: step name -> hash), add ``seeds`` (the steps of rows taken out
        by ``--retry-errors``), rewrite the file with that alone and open it for appending.
        Returns how many steps are taken up again."""
        for rid, steps in (seeds or {}).items():
            for name, result in steps.items():
                if is_result(result) and result.get("hash") == hashes.get(name, object()):
                    self.pending.setdefault(rid, {})[name] = dict(result)
        if self.path.exists():
            for line in _lines(self.path):
                try:
                    entry = json.loads(line)
                    rid, name, digest, result = (
                        entry["id"],
                        entry["step"],
                        entry["hash"],
                        entry["result"],
                    )
                except (ValueError, KeyError, TypeError):
                    continue
                if not (isinstance(rid, str) and isinstance(name, str)):
                    continue
                if not is_result(result) or hashes.get(name) != digest or rid in done:
                    continue
                result["hash"] = digest
                self.pending.setdefault(rid, {})[name] = result
        self._rewrite()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return sum(len(steps) for steps in self.pending.values())

    def add(self, rid: str, name: str, digest: str, result: dict[str, Any]) -> None:
        """A step finished: on disk before the record's next call is sent."""
        self.pending.setdefault(rid, {})[name] = result
        if self._fd is not None:
            line = json.dumps({"id": rid, "step": name, "hash": digest, "result": result})
            os.write(self._fd, line.encode() + b"\n")

    def forget(self, rid: str) -> None:
        """The record's row is on its way to the output: its steps are in it."""
        self.pending.pop(rid, None)

    def close(self) -> None:
        """Keep only what is still unfinished (nothing, after a run that finished them all)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._rewrite()

    def _rewrite(self) -> None:
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            for rid, steps in self.pending.items():
                for name, result in steps.items():
                    digest = result.get("hash", "")
                    entry = {"id": rid, "step": name, "hash": digest, "result": result}
                    out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        src = open_state_file(path)
    except ValueError:  # not a regular file (a FIFO would wait for a writer): nothing of ours
        return
    with src:
        while True:
            line = src.readline(MAX_LINE)
            if not line:
                return
            if not line.endswith(b"\n"):
                if len(line) >= MAX_LINE:  # skip the rest of an overlong line
                    while line and not line.endswith(b"\n"):
                        line = src.readline(MAX_LINE)
                continue  # a torn tail, or too long: not a line of ours
            yield line


def is_result(value: Any) -> bool:
    """A finished step's result as this module and the rows keep it: what a step taken up
    again relies on (a hand-edited or damaged line, or row, is not taken up: its step runs)."""
    return (
        isinstance(value, dict)
        and value.get("status") == "ok"
        and isinstance(value.get("text"), str | None)
        and isinstance(value.get("fields"), dict)
        and isinstance(value.get("hash"), str)
    )
