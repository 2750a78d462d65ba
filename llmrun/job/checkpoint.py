"""The resume checkpoint: what a finished run knew, so the next one need not read it again.

Resuming a job of 10^6 rows read the whole output (to learn the finished ids and count the
rows) and the whole input (to skip the finished records): seconds, every time (issue 14). A
run that completes in direct mode leaves ``<output>.llmrun/resume.idx``:

- the output's first Y bytes (its size then): their finished ids (as layers of digests in
  files beside it, job/idfiles.py), their ok and error rows and spend;
- the input's first X bytes (up to the last whole line read): every record the selection took
  from them (S of them, on L lines) has a row in those Y bytes.

The next run trusts it only if both files are still the same files (device and inode:
``--fresh``, ``--retry-errors`` and ``repost`` replace the output), their first X and Y bytes
are unchanged (a CRC-32 of each, read again: ~0.4 s for 600 MB), and the job hash and the
selection's shard and sample are the same (``scope``). Then
it indexes only the output rows past Y (rows an interrupted or killed run added since) and
reads the input from X on. Anything else (no file, another version, a changed prefix, a
truncated file) is no checkpoint: the run reads everything, as without one. Nothing is trusted
that a kill -9 can leave half-done: the head is replaced atomically once the files of ids it
names are written and synced, a file of ids is never changed once named, and one no head names
any more is deleted only after the head that dropped it is on disk; a run killed later leaves
it describing a prefix the files still begin with.

It is saved at the end of a completed run, and every ``LLMRUN_CHECKPOINT_S`` seconds (30 by
default) while a direct run goes on (``Frontier``): then the input prefix ends where every
record before it has its row written, which trails what has been read by the records in
flight. So a run killed with ``kill -9`` (out of memory, a preempted machine) resumes by
indexing only the rows of its last half minute, not the whole output (issue 14).

Only a selection that takes each record on its own (no ``offset``, ``limit`` or ``sample`` by
count, which count records, and no ``filter``, which reads fields) and the JSONL loader and
writer take part.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..recipe.selection import Selection
from . import idfiles
from .idfiles import IdFile
from .store import IdSetBuilder, Layer, atomic_write, read_state_file

NAME = "resume.idx"
VERSION = 2  # 1 held the ids in this file: a run held them all in memory to rewrite it
HEAD_CAP = 1 << 20  # bytes of the head read: it holds a few numbers per file of ids
# Ids of the rows written since the last checkpoint held in memory at once (256 KiB of
# digests); past that they go to a file of their own, merged into the checkpoint's new one. A
# run writes ~10^4 rows a second at best, so 30 s of rows held 5 MB (the 10^6-record run's peak).
SPILL_IDS = 1 << 14
# Ids of the output indexed at start held in memory (16 MiB of digests); past that they go to
# files of ids (``IndexSpill``): an output of 10^8 rows without a checkpoint held 1.6 GB.
INDEX_IN_MEMORY = 1 << 20
EVERY_S = 30.0  # between the checkpoints a direct run saves as it goes (LLMRUN_CHECKPOINT_S)


def every_s() -> float:
    """Seconds between checkpoints during a run: ``LLMRUN_CHECKPOINT_S`` (0 or less: only at
    the end of a completed run, as before), else EVERY_S (also for a value that is no finite
    number: ``nan`` would reach the timer)."""
    try:
        value = float(os.environ.get("LLMRUN_CHECKPOINT_S", EVERY_S))
    except ValueError:
        return EVERY_S
    return value if math.isfinite(value) else EVERY_S


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
    files: list[IdFile]  # the finished ids, oldest first (job/idfiles.py)
    layers: list[Layer] = field(default_factory=list)  # the files mapped, once read


class Frontier:
    """How far into the input every record has its row written, while a run goes on.

    The reader reports each chunk of records it hands to the workers (``read``: their ids,
    where the input was read to, the records selected so far); the writer reports each row it
    has handed to the OS (``written``). ``reached`` is the end of the latest chunk that, with
    every chunk before it, has all its rows written: every record the selection took before
    that point is finished, though records past it may be too (rows come in any order). Holds
    one entry per record in flight, not per record of the run."""

    def __init__(self) -> None:
        # [input read to (None: not a whole line), selected so far, rows still to write]
        self._chunks: deque[list[Any]] = deque()
        self._first = 0  # the serial number of _chunks[0]
        self._of: dict[str, int] = {}  # a record in flight: its chunk's serial number
        self._again: dict[str, list[int]] = {}  # an id in flight twice (a repeated record)
        self.reached: tuple[tuple[int, int], int] | None = None

    def read(self, ids: list[str], end: tuple[int, int] | None, selected: int) -> None:
        serial = self._first + len(self._chunks)
        self._chunks.append([end, selected, len(ids)])
        of = self._of
        for rid in ids:
            if rid in of:
                self._again.setdefault(rid, []).append(serial)
            else:
                of[rid] = serial
        self._advance()

    def written(self, rid: str) -> None:
        serial = self._of.pop(rid, None)
        if serial is None:
            return  # not read by this reader (a batch phase's row)
        again = self._again.get(rid)
        if again:  # a repeated id: its rows are told apart by nothing, so first read first
            self._of[rid] = again.pop(0)
            if not again:
                del self._again[rid]
        self._chunks[serial - self._first][2] -= 1
        self._advance()

    def _advance(self) -> None:
        chunks = self._chunks
        while chunks and chunks[0][2] == 0:
            end, selected, _ = chunks.popleft()
            self._first += 1
            if end is not None:
                self.reached = (end, selected)


@dataclass
class Saver:
    """Saves checkpoints for one run, each from the last: the input and output prefixes are
    extended (only the bytes past the last checkpoint are read for their CRC), and the ids of
    the rows written since go into one more file of ids, which takes in the newest files when
    they are not much larger (``idfiles.stack``). Between checkpoints it holds no id.

    ``read_ids(start, end)`` is the writer's (``JsonlWriter.read_ids``). A checkpoint is saved
    from a worker thread, never two at once."""

    state_dir: Path
    scope: str
    data: Path
    output: Path
    read_ids: Callable[[int, int], Iterator[tuple[list[bytes], int, int, list[float]]]]
    start: Checkpoint | None  # the one this run began from (its prefixes are checked)
    files: list[IdFile]  # its files of ids
    pending: list[Layer]  # ids in memory the files do not hold: rows past it when the run began
    indexed_to: int  # the output's size when the run began: its rows are in files and pending
    ok: int
    error: int
    cost_usd: float
    saved: Checkpoint | None = field(default=None, init=False)

    def save(self, read_to: tuple[int, int], selected: int, size: int) -> None:
        """A checkpoint: every record the selection took (``selected``) from the input's first
        ``read_to`` bytes (and lines) has its row in the output's first ``size`` bytes."""
        last = self.saved or self.start
        if last is not None and (
            read_to[0] < last.input.size
            or size < last.output.size
            or (read_to[0], size) == (last.input.size, last.output.size)
        ):
            return  # nothing read or written past it: it still says all there is
        with open(self.output, "rb") as fh:
            os.fsync(fh.fileno())  # the rows it counts on are on disk before it is
        builder = IdSetBuilder()
        spilled: list[IdFile] = []  # the rows since, SPILL_IDS at a time (merged below)
        ok, error, cost_usd = self.ok, self.error, self.cost_usd
        for ids, n_ok, n_error, costs in self.read_ids(self.indexed_to, size):
            builder.add_all_utf8(ids)
            ok, error = ok + n_ok, error + n_error
            for one in costs:
                cost_usd += one
            if builder.count() >= SPILL_IDS:  # (not synced: merged below, or a leftover)
                taken = [*self.files, *spilled]
                spill = idfiles.write_new(
                    self.state_dir, [builder.take], builder.count(), taken, durable=False
                )
                spilled.append(spill)
        files = self._add(builder, spilled)
        if last is None:
            data, written = Prefix.of(self.data, read_to[0]), Prefix.of(self.output, size)
        else:  # both files still begin with its prefixes (checked at start): extend them
            data, written = last.input.extended(read_to[0]), last.output.extended(size)
        point = Checkpoint(
            self.scope, data, read_to[1], selected, written, ok, error, cost_usd, files
        )
        write_checkpoint(self.state_dir, point)
        # Only now that the head naming them is on disk: what it no longer names may go.
        self.files, self.pending, self.indexed_to = files, [], size
        self.ok, self.error, self.cost_usd = ok, error, cost_usd
        self.saved = point
        prune(self.state_dir, {f.name for f in files})

    def _add(self, builder: IdSetBuilder, spilled: list[IdFile]) -> list[IdFile]:
        """The files of ids with one more: the ids of ``builder``, ``spilled`` and ``pending``,
        with the newest files that are not much larger merged in (``idfiles.stack``)."""
        parts: list[idfiles.Part] = [idfiles.in_memory(layer) for layer in self.pending]
        parts.append(builder.take)
        most = builder.count() + sum(layer[3] for layer in self.pending)
        return idfiles.stack(self.state_dir, self.files, parts, most, spilled)


class IndexSpill:
    """Where the ids of the output indexed at start go past ``at`` in memory: files of ids
    (``store.Spill``), stacked as a checkpoint's are. A Saver takes them as its first files;
    a run without one deletes them once mapped (the next run prunes what is left)."""

    def __init__(self, state_dir: Path, at: int | None = None) -> None:
        self.state_dir = state_dir
        self.at = INDEX_IN_MEMORY if at is None else at
        self.files: list[IdFile] = []

    def add(self, builder: IdSetBuilder) -> None:
        count = builder.count()
        if count >= self.at:
            self.files = idfiles.stack(self.state_dir, self.files, [builder.take], count)

    def layers(self) -> list[Layer]:
        return [idfiles.mapped(self.state_dir, file) for file in self.files]


def named(state_dir: Path) -> set[str]:
    """The files of ids the checkpoint's head names, whether or not it still holds (another
    run, with another selection, may use it)."""
    try:
        head = json.loads(read_state_file(state_dir / NAME, HEAD_CAP))
        entries = head["files"] if head.get("version") == VERSION else []
        return {e[0] for e in entries if isinstance(e, list) and e and isinstance(e[0], str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


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
    """The checkpoint, if it still describes ``data`` and ``output``, its files of ids mapped
    for lookups; else None."""
    try:
        head = json.loads(read_state_file(state_dir / NAME, HEAD_CAP))
        if head.get("version") != VERSION or head.get("scope") != scope:
            return None
        if head["byteorder"] != sys.byteorder:
            return None  # (its tables are read in place)
        files = [IdFile.from_head(entry) for entry in head["files"]]
        point = Checkpoint(
            scope,
            Prefix(**head["input"]),
            int(head["lines"]),
            int(head["selected"]),
            Prefix(**head["output"]),
            int(head["ok"]),
            int(head["error"]),
            float(head["cost_usd"]),
            [file for file in files if file is not None],
        )
        if len(point.files) != len(files) or len({f.name for f in point.files}) != len(files):
            return None
        # The files first: a checkpoint that no longer holds costs nothing more.
        if not (point.input.unchanged(data) and point.output.unchanged(output)):
            return None
        if not all(idfiles.checked(state_dir, file) for file in point.files):
            return None  # damaged or gone: its ids cannot be trusted
        point.layers = [idfiles.mapped(state_dir, file) for file in point.files]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None
    return point


def write_checkpoint(state_dir: Path, point: Checkpoint) -> None:
    """Replace the checkpoint's head atomically (a crash leaves the old one or the new one);
    the files of ids it names are written and synced already."""
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
        "files": [file.head() for file in point.files],
    }
    atomic_write(state_dir / NAME, json.dumps(head) + "\n")


def prune(state_dir: Path, keep: set[str]) -> None:
    """Delete the files of ids no checkpoint names (merged into a newer one, or left by a run
    killed while writing one). A run holds the output's lock, so no other run is writing."""
    try:
        entries = list(os.scandir(state_dir))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        leftover = name.startswith(".resume-") and name.endswith(".tmp")
        if leftover or (idfiles.NAME.fullmatch(name) and name not in keep):
            try:
                os.unlink(entry.path)
            except OSError:
                pass  # (Windows keeps a mapped file: the next checkpoint tries again)


def _crc32(path: Path, size: int, *, start: int = 0, crc: int = 0) -> int:
    """The CRC-32 of ``size`` bytes of the file at ``path`` from ``start``, continuing ``crc``."""
    with open(path, "rb") as fh:
        return idfiles.crc32_of(fh, start, size, crc)
