"""The resume checkpoint: what a finished run knew, so the next one need not read it again.

Resuming a job of 10^6 rows read the whole output (to learn the finished ids and count the
rows) and the whole input (to skip the finished records): seconds, every time (issue 14). A
run that completes in direct mode leaves ``<output>.llmrun/resume.idx``:

- the output's first Y bytes (its size then): their finished ids as IdSet layers, their ok and
  error rows and spend;
- the input's first X bytes (up to the last whole line read): every record the selection took
  from them (S of them, on L lines) has a row in those Y bytes.

The next run trusts it only if both files are still the same files (device and inode:
``--fresh``, ``--retry-errors`` and ``repost`` replace the output), their first X and Y bytes
are unchanged (a CRC-32 of each, read again: ~0.4 s for 600 MB), and the job hash and the
selection's shard and sample are the same (``scope``). Then
it indexes only the output rows past Y (rows an interrupted or killed run added since) and
reads the input from X on. Anything else (no file, another version, a changed prefix, a
truncated file) is no checkpoint: the run reads everything, as without one. Nothing is trusted
that a kill -9 can leave half-done: the file is replaced atomically at the end of a completed
run, and a run killed later leaves it describing a prefix the files still begin with.

Only a selection that takes each record on its own (no ``offset``, ``limit`` or ``sample`` by
count, which count records, and no ``filter``, which reads fields) and the JSONL loader and
writer take part.
"""

from __future__ import annotations

import array
import json
import os
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..recipe.selection import Selection
from .store import Layer, fsync_dir

NAME = "resume.idx"
VERSION = 1
MAX_LAYERS = 4  # past this many, the layers are merged into one when the checkpoint is saved


@dataclass(frozen=True)
class Prefix:
    """The first ``size`` bytes of a file, as they were."""

    path: str
    dev: int
    ino: int
    size: int
    crc32: int

    @classmethod
    def of(cls, path: Path, size: int) -> Prefix:
        st = os.stat(path)
        return cls(str(path), st.st_dev, st.st_ino, size, _crc32(path, size))

    def extended(self, size: int) -> Prefix:
        """The first ``size`` bytes of the same file, which begins with this prefix (checked
        when the run started): only the bytes past it are read."""
        crc = _crc32(Path(self.path), size - self.size, start=self.size, crc=self.crc32)
        return Prefix(self.path, self.dev, self.ino, size, crc)

    def unchanged(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (str(path), st.st_dev, st.st_ino) != (self.path, self.dev, self.ino):
            return False
        return st.st_size >= self.size and _crc32(path, self.size) == self.crc32


@dataclass
class Checkpoint:
    scope: str  # the job and the selection it was made for (``scope``)
    input: Prefix
    lines: int  # input lines in the prefix
    selected: int  # records the selection took from them
    output: Prefix
    ok: int
    error: int
    cost_usd: float
    layers: list[Layer]


def usable(recipe: Any, loader: Any, chosen: Selection, limit: int | None) -> bool:
    """Whether this run may use and leave a checkpoint (see the module's docstring)."""
    return (
        recipe.writer.name == "jsonl"
        and recipe.id_field is not None
        and callable(getattr(loader, "seekable", None))
        and loader.seekable()
        and loader.ids_first(recipe.id_field, (0, 0)) is not None
        and not chosen.filter
        and chosen.offset == 0
        and chosen.limit is None
        and limit is None
        and chosen.sample_count is None
    )


def scope(recipe: Any, chosen: Selection) -> str:
    """What a checkpoint holds for: the job (its hash) and which of its records the selection
    takes, which the job hash leaves out (a shard, a sample and its seed): another shard of
    the same job must not take the records before the checkpoint's end for done."""
    taken = {"shard": chosen.shard, "sample": chosen.sample, "seed": chosen.seed}
    return f"{recipe.job_hash} {json.dumps(taken, sort_keys=True)}"


def read_checkpoint(state_dir: Path, scope: str, data: Path, output: Path) -> Checkpoint | None:
    """The checkpoint, if it still describes ``data`` and ``output``; else None."""
    try:
        with open(state_dir / NAME, "rb") as fh:
            head = json.loads(fh.readline())
            if head.get("version") != VERSION or head.get("scope") != scope:
                return None
            point = Checkpoint(
                scope,
                Prefix(**head["input"]),
                int(head["lines"]),
                int(head["selected"]),
                Prefix(**head["output"]),
                int(head["ok"]),
                int(head["error"]),
                float(head["cost_usd"]),
                [],
            )
            body_crc, layers = int(head["body_crc32"]), list(head["layers"])
            # The files first: a checkpoint that no longer holds costs no memory for its ids.
            if not (point.input.unchanged(data) and point.output.unchanged(output)):
                return None
            crc = 0
            for n, shift, groups in layers:
                # The shape IdSet's lookup relies on: an entry per group and one past the end.
                if not (0 < 128 - shift <= 64 and groups == (1 << (128 - shift)) + 1):
                    return None
                raw = fh.read(8 * groups)
                digests = fh.read(16 * n)
                crc = zlib.crc32(digests, zlib.crc32(raw, crc))
                table = array.array("Q")
                table.frombytes(raw)
                if sys.byteorder != head["byteorder"]:
                    table.byteswap()
                if len(table) != groups or len(digests) != 16 * n or table[0] or table[-1] != n:
                    return None
                point.layers.append((digests, table, int(shift), int(n)))
            if crc != body_crc or fh.read(1):
                return None  # damaged on disk: its ids cannot be trusted
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None
    return point


def write_checkpoint(state_dir: Path, point: Checkpoint) -> None:
    """Replace the checkpoint atomically (a crash leaves the old one or the new one)."""
    head = {
        "version": VERSION,
        "byteorder": sys.byteorder,
        "scope": point.scope,
        "input": asdict(point.input),
        "lines": point.lines,
        "selected": point.selected,
        "output": asdict(point.output),
        "ok": point.ok,
        "error": point.error,
        "cost_usd": point.cost_usd,
        "layers": [[n, shift, len(table)] for _d, table, shift, n in point.layers],
        "body_crc32": 0,
    }
    crc = 0
    for digests, table, _shift, _n in point.layers:
        crc = zlib.crc32(digests, zlib.crc32(table.tobytes(), crc))
    head["body_crc32"] = crc
    path = state_dir / NAME
    tmp = state_dir / f".{NAME}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(head).encode() + b"\n")
        for digests, table, _shift, _n in point.layers:
            fh.write(table.tobytes())
            fh.write(digests)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(state_dir)


def _crc32(path: Path, size: int, *, start: int = 0, crc: int = 0) -> int:
    """The CRC-32 of ``size`` bytes from ``start``, continuing ``crc``."""
    # Read in blocks, not mapped: a mapping's pages would count in the process's RSS.
    with open(path, "rb") as fh:
        fh.seek(start)
        while size > 0:
            block = fh.read(min(size, 1 << 20))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            size -= len(block)
    return crc
