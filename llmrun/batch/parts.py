"""Batch files being written: each request's line and its record's line go straight to disk
(a file can be 200 MB), split into parts within the provider's limits, one open part per
recipe step (a batch holds one step's requests: one model); ``close`` makes both files of a
part durable under their final names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .journal import Journal, make_durable


@dataclass
class Planned:
    name: str
    requests: int
    size: int
    recipe_step: str | None = None


class PartFile:
    """A batch file being written: lines go straight to disk (a file can be 200 MB); ``close``
    makes both files durable under their final names."""

    def __init__(self, journal: Journal, name: str, recipe_step: str | None = None) -> None:
        self.name = name
        self.recipe_step = recipe_step
        self.requests = 0
        self.size = 0
        self._paths = [journal.file(name, ""), journal.file(name, "records")]
        self._tmps = [p.with_name(f".{p.name}.tmp") for p in self._paths]
        self._files = [open(t, "wb") for t in self._tmps]  # noqa: SIM115 - closed in close()

    def add(self, line: bytes, record: bytes) -> None:
        self._files[0].write(line)
        self._files[1].write(record)
        self.requests += 1
        self.size += len(line)

    def close(self) -> Planned:
        for fh, tmp, path in zip(self._files, self._tmps, self._paths, strict=True):
            fh.close()
            make_durable(tmp, path)
        return Planned(self.name, self.requests, self.size, self.recipe_step)


class PartWriter:
    """Part files being written, one open file per recipe step (a steps: recipe's parts each
    hold one step's requests: a batch has one model), each within the provider's limits."""

    def __init__(self, journal: Journal, max_requests: int, max_bytes: int) -> None:
        self.journal = journal
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.files: dict[str | None, PartFile] = {}
        self.planned: list[Planned] = []

    def add(self, step: str | None, line: bytes, record: list[Any]) -> None:
        current = self.files.get(step)
        if current and (
            current.requests >= self.max_requests or current.size + len(line) > self.max_bytes
        ):
            self.planned.append(current.close())
            current = None
        if current is None:
            name = self.journal.new_part_name()
            current = self.files[step] = PartFile(self.journal, name, step)
        current.add(line, (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode())

    def close(self) -> list[Planned]:
        self.planned += [f.close() for f in self.files.values()]
        self.files.clear()
        return self.planned
