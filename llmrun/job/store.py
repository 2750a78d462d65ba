"""Run state beside the output: the lock, the manifest, moving an old output aside, and the
compact index of finished ids that resume checks every record against.

For ``out/labels.jsonl`` the state lives in ``out/labels.jsonl.llmrun/``:
``lock`` (held with flock while a run writes; the OS releases it when the process dies, even by
SIGKILL, so no stale lock survives a crash) and ``manifest.json`` (written atomically).
"""

from __future__ import annotations

import array
import bisect
import contextlib
import datetime as dt
import itertools
import json
import mmap
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from hashlib import blake2b
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..durable import fsync_dir
from ..errors import LockedError, RecipeError

DIGEST = 16  # bytes of blake2b per id: collisions are out of reach (~1e-20 at 10^9 ids)
MANIFEST_CAP = 64 << 20  # bytes of manifest.json read (a long batch job's is well under 1 MiB)


def now_iso() -> str:
    """UTC now as ``2026-01-02T03:04:05.678Z``. Every row takes two, so the date and time are
    formatted once per second and only the milliseconds per call (issue 14: 4% of the CPU)."""
    now = time.time()
    second = int(now)
    milli = int((now - second) * 1000)
    last = _LAST
    if last[0] == second and last[1] == milli:  # rows finish in bursts: often the same ms
        return last[2]  # type: ignore[no-any-return]
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    text = f"{cached[1]}.{milli:03d}Z"
    _LAST[:] = [second, milli, text]
    return text


_SECOND: list[Any] = [-1, ""]  # [whole second, its formatted date and time]
_LAST: list[Any] = [-1, -1, ""]  # [second, millisecond, the text] of the latest call


# A layer of sorted digests: (digests, group start table, shift of a digest to its group, count).
# In memory (bytes and an array), or a file of the resume checkpoint mapped (job/idfiles.py).
Layer = tuple["bytes | bytearray | mmap.mmap", "array.array[int] | memoryview", int, int]


class IdSet:
    """A read-only set of ids kept as digests: 16 bytes of blake2b an id, however long the ids
    are (a Python set of strings costs ~100 bytes each), grouped by their leading bits.

    A lookup hashes the id, reads where its group starts in a table (one entry per ~4 ids) and
    looks for the digest in that group with ``bytes.find``: no Python-level search (the sorted
    buffer with a bisected fence array this replaces took ~3 us a lookup, and resume looks up
    every input record). Building it never holds a Python object per id (issue 14: a set of
    10^6 digests took 150 MB for a moment): see ``IdSetBuilder``. A set may hold several such
    layers (the resume checkpoint's and the rows written since, job/checkpoint.py)."""

    def __init__(
        self,
        ids: Iterable[str] = (),
        *,
        builder: IdSetBuilder | None = None,
        layers: Iterable[Layer] = (),
    ) -> None:
        """The set of ``ids``, or of what ``builder`` collected (which it empties), with
        ``layers`` (of other sets) beside it."""
        if builder is None:
            builder = IdSetBuilder()
            builder.add_all(ids)
        own = builder.parts()
        self._layers = [layer for layer in (*layers, own) if layer[3]]
        self._n = sum(layer[3] for layer in self._layers)

    def layers(self) -> list[Layer]:
        return list(self._layers)

    def __len__(self) -> int:
        """Digests held (an id in two layers counts twice)."""
        return self._n

    def __contains__(self, rid: object) -> bool:
        if not self._n or not isinstance(rid, str):
            return False
        key = blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=DIGEST).digest()
        number = int.from_bytes(key, "big")
        for buf, table, shift, _n in self._layers:
            group = number >> shift
            lo = table[group] * DIGEST
            hi = table[group + 1] * DIGEST
            pos = buf.find(key, lo, hi)
            while pos >= 0 and (pos - lo) % DIGEST:  # a match straddling two digests: go on
                pos = buf.find(key, pos + 1, hi)
            if pos >= 0:
                return True
        return False


class IdSetBuilder:
    """Collects ids (or their UTF-8 bytes, as a writer reads them from its output) into 256
    byte buffers by their digest's first byte; ``parts`` sorts one buffer at a time, so at
    most 1/256 of the ids are ever Python objects at once."""

    def __init__(self) -> None:
        self._parts = [bytearray() for _ in range(256)]

    def add(self, rid: str) -> None:
        self.add_utf8(rid.encode("utf-8", "surrogatepass"))

    def add_all(self, ids: Iterable[str]) -> None:
        parts = self._parts
        for rid in ids:
            key = blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=DIGEST).digest()
            parts[key[0]] += key

    def add_utf8(self, raw: bytes) -> None:
        key = blake2b(raw, digest_size=DIGEST).digest()
        self._parts[key[0]] += key

    def add_all_utf8(self, raws: Iterable[bytes]) -> None:
        parts = self._parts
        for raw in raws:
            key = blake2b(raw, digest_size=DIGEST).digest()
            parts[key[0]] += key

    def take(self, first: int) -> bytearray:
        """The digests collected whose first byte is ``first``, unsorted (a repeated id's
        twice); the builder lets go of them."""
        part = self._parts[first]
        self._parts[first] = bytearray()
        return part

    def count(self) -> int:
        """Digests collected (an id added twice counts twice)."""
        return sum(len(p) for p in self._parts) // DIGEST

    def parts(self) -> Layer:
        """(sorted unique digests, group start table, shift of a digest to its group, count).
        Empties the builder."""
        shape = Shape.of(self.count())
        out = bytearray()
        table = array.array("Q", [0]) * (shape.groups + 1)
        count = 0
        for first in range(256):
            digests, starts = shape.sort(first, self.take(first), count)
            out += digests
            table[first * shape.per_part : (first + 1) * shape.per_part] = starts
            count += len(digests) // DIGEST
        table[shape.groups] = count
        return out, table, shape.shift, count


class Shape:
    """How a layer of up to ``n`` digests is grouped: ``2**bits`` groups by their leading bits,
    of 2 to 4 digests (a lookup's find looks at ~64 bytes; the table costs 2 to 4 bytes an id),
    and at least one group per first byte, so that each first byte fills whole groups: a layer
    is written (and merged, job/idfiles.py) one first byte at a time."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.groups = 1 << bits
        self.per_part = 1 << (bits - 8)  # groups a first byte spans
        self.shift = 128 - bits

    @classmethod
    def of(cls, n: int) -> Shape:
        return cls(max(8, (max(n, 1) // 4).bit_length()))

    def sort(
        self, first: int, raw: bytes | bytearray, count: int
    ) -> tuple[bytes, array.array[int]]:
        """The digests of ``raw`` (all with the first byte ``first``) sorted and unique, and
        the table's entries for their groups (``count`` digests come before them)."""
        data = bytes(raw)  # a bytearray's slices are no set members (bytes: no copy)
        keys = sorted({data[i : i + DIGEST] for i in range(0, len(data), DIGEST)})
        del data
        starts = array.array("Q", [0]) * self.per_part
        base = first * self.per_part
        for sub in range(self.per_part):
            # The first digest of group ``base + sub``: bisect on the group's leading bytes.
            edge = ((base + sub) << self.shift).to_bytes(DIGEST, "big")
            starts[sub] = count + bisect.bisect_left(keys, edge)
        return b"".join(keys), starts


def refuse_links(folder: Path) -> None:
    """RecipeError when ``folder`` is a symbolic link or holds one. llmrun writes its state
    there by fixed names (run.log, manifest.json, ...): a shared folder that ships
    ``out.jsonl.llmrun/run.log -> ~/.bashrc`` had every run append to that file."""
    found = [folder] if folder.is_symlink() else []
    if not found and folder.is_dir():
        for root, dirs, files in os.walk(folder):  # links are not followed
            found += [Path(root, n) for n in (*dirs, *files) if os.path.islink(Path(root, n))]
    if found:
        raise RecipeError(
            f"{found[0]} is a symbolic link (to {os.readlink(found[0])}): llmrun keeps its "
            "state in real files beside the output and writes through no link; remove it"
        )


class RunState:
    """The state folder of one output file."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".llmrun")
        self.manifest_path = self.dir / "manifest.json"
        self._lock_file: Any = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output's lock, or raise LockedError naming the holder; RecipeError when
        the state folder is or holds a symbolic link."""
        refuse_links(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "lock"
        fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            if not _try_lock(fh):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise LockedError(
                    f"{self.output} is being written by another llmrun run ({holder}); "
                    "wait for it to finish or stop it first"
                )
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {now_iso()}\n")
            fh.flush()
            self._lock_file = fh
            yield
        finally:
            self._lock_file = None
            fh.close()  # closing releases the lock

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads(read_state_file(self.manifest_path, MANIFEST_CAP))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        atomic_write(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def move_aside(self) -> list[Path]:
        """For --fresh: rename the old output and manifest (never delete them)."""
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        moved: list[Path] = []
        if self.output.exists():
            out = self.output
            target = _unused(lambda n: out.with_name(f"{out.stem}.old-{stamp}{n}{out.suffix}"))
            out.rename(target)
            moved.append(target)
        if self.manifest_path.exists():
            target = _unused(lambda n: self.dir / f"manifest.old-{stamp}{n}.json")
            self.manifest_path.rename(target)
            moved.append(target)
        journal = self.dir / "steps.jsonl"  # a steps: recipe's unfinished records start over too
        if journal.exists():
            target = _unused(lambda n: self.dir / f"steps.old-{stamp}{n}.jsonl")
            journal.rename(target)
            moved.append(target)
        return moved

    def kept(self, kind: str) -> Path:
        """Where a rewrite (``--retry-errors``: ``retried``, ``repost``: ``before-repost``)
        keeps the output as it was: ``<kind>-<time><suffix>`` in this folder, a name not
        taken yet (the folder is made)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        suffix = self.output.suffix
        return _unused(lambda n: self.dir / f"{kind}-{stamp}{n}{suffix}")


def _unused(name: Callable[[str], Path]) -> Path:
    """The first of name(""), name("-2"), ... that does not exist: a rename onto an existing
    file would replace it, and two --fresh runs within one second would lose the first output."""
    for n in itertools.count(1):
        path = name("" if n == 1 else f"-{n}")
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def open_state_file(path: Path) -> BinaryIO:
    """``path`` opened for reading as the untrusted file it may be (a state folder can come with
    a shared output): a regular file, whatever a link points at. Opening a FIFO does not wait
    for a writer, and a FIFO or a device (``/dev/zero``: endless) is refused with ValueError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_state_file(path: Path, cap: int) -> bytes:
    """A state file's bytes (see ``open_state_file``); ValueError past ``cap`` bytes."""
    with open_state_file(path) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"{path} is longer than {cap} bytes")
    return data


def atomic_write(path: Path, text: str) -> None:
    """Write a file so a crash leaves either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _try_lock(fh: Any) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Spill(Protocol):
    """Where the ids indexed at start go past what memory should hold (``IndexSpill`` in
    job/checkpoint.py: files of ids)."""

    def add(self, builder: IdSetBuilder) -> None:
        """Take the ids out of ``builder`` when it holds too many."""

    def layers(self) -> list[Layer]:
        """What was taken, for lookups."""


def index_output(
    rows: Iterable[Mapping[str, Any]], stats: Any, spill: Spill | None = None
) -> IdSet:
    """The ids of the rows a writer gives back at start, counted into ``stats`` (a
    ``RunStats``) as resumed ok/error rows and resumed spend."""
    builder = IdSetBuilder()
    for n, row in enumerate(rows, 1):
        count_row(row, stats)
        builder.add(str(row["id"]))
        if spill is not None and not n % 4096:
            spill.add(builder)
    return IdSet(builder=builder, layers=spill.layers() if spill is not None else ())


def count_row(row: Mapping[str, Any], stats: Any) -> None:
    """One row already in the output, counted as resumed."""
    if row.get("status") == "ok":
        stats.resumed_ok += 1
    else:
        stats.resumed_error += 1
    cost = row.get("cost_usd")
    if isinstance(cost, int | float):
        stats.resumed_cost_usd += cost


def index_writer(
    writer: Any,
    stats: Any,
    *,
    start: int = 0,
    layers: Iterable[Layer] = (),
    spill: Spill | None = None,
) -> IdSet:
    """Open the writer for appending and index the rows already in its output, counted into
    ``stats``. A writer with ``open_ids`` (the JSONL writer) gives back only what resume needs,
    block by block: the UTF-8 bytes of each row's id, how many rows are ok and how many
    errors, and the numeric ``cost_usd`` values in file order (added one by one, so the sum is
    the very float ``index_output`` gives), without building a dict per row; any other writer
    gives whole rows through ``open``.

    ``start`` and ``layers`` (the resume checkpoint, job/checkpoint.py): the rows before byte
    ``start`` are known already (their ids are ``layers``, their counts are in ``stats``).
    ``spill``: where ids go past what memory should hold; the set's layers are then
    ``layers``, the spilled ones, and the rest, in that order."""
    open_ids = getattr(writer, "open_ids", None)
    if open_ids is None:
        assert not start, "only a writer with open_ids reads from an offset"
        return index_output(writer.open(), stats, spill)
    builder = IdSetBuilder()
    for ids, ok, error, costs in open_ids(start):
        builder.add_all_utf8(ids)
        stats.resumed_ok += ok
        stats.resumed_error += error
        for cost in costs:
            stats.resumed_cost_usd += cost
        if spill is not None:
            spill.add(builder)
    spilled = spill.layers() if spill is not None else []
    return IdSet(builder=builder, layers=[*layers, *spilled])
