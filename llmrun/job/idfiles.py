"""The finished ids of the resume checkpoint (job/checkpoint.py), kept in files beside it.

Each layer of ids is one file in the state folder, ``resume-<serial>.ids``, written once and
never changed: the group start table (8 bytes a group, see ``store.Shape``), zeros up to the
next page, then the sorted unique 16-byte digests. The checkpoint's head names its files with
their counts and CRC-32s.

Before, the head and every layer were one file, rewritten whole at each checkpoint, and a run
held every id it had written as digests in memory to do so: 16 bytes a record (1.6 GB at 10^8
records), twice over while layers were merged (issue 14's 10^6-row run grew from 54 to 113 MB
with this and the duplicate-id filters). Now a checkpoint adds a file for the rows written
since the last one, merged with the newest files when they are not much larger (so a run of N
records keeps about log4(N / rows per checkpoint) files), and a merge streams the files one
first byte at a time: memory holds 1/256 of the ids being merged, not all of them.

A resumed run looks ids up through a read-only map of each file: the pages its lookups touch
(and, by the kernel's fault-around, 64 KiB about each) are the page cache's, which the kernel
drops under pressure without a write; the heap does not grow with them (RSS does, up to the
files' size: benchmarks/README.md). An output indexed at start without a checkpoint goes to
such files too, past ``checkpoint.INDEX_IN_MEMORY`` ids.
"""

from __future__ import annotations

import array
import mmap
import os
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..durable import fsync_dir
from .store import DIGEST, Layer, Shape, open_state_file

PAGE = mmap.ALLOCATIONGRANULARITY  # a map of the digests starts on such a boundary
GROWTH = 4  # a new file of ids takes in the newest ones up to 4 times its size
MAX_FILES = 8  # past this many, the newest are merged whatever their sizes
NAME = re.compile(r"resume-([0-9]{1,12})\.ids")
BLOCK = 1 << 17  # bytes read at once for a CRC (larger blocks stay in a thread's heap)

# Where the digests whose first byte is ``first`` are, for one source of a merge: a file of the
# checkpoint, a layer in memory, or the ids read from the rows written since.
Part = Callable[[int], bytes | bytearray]


@dataclass(frozen=True)
class IdFile:
    """One layer's file: its name in the state folder, digests, shape and CRC-32s."""

    name: str
    n: int
    bits: int
    table_crc: int
    digests_crc: int

    @property
    def shape(self) -> Shape:
        return Shape(self.bits)

    @property
    def table_bytes(self) -> int:
        return 8 * (self.shape.groups + 1)

    @property
    def digests_at(self) -> int:
        return -(-self.table_bytes // PAGE) * PAGE

    @property
    def size(self) -> int:
        return self.digests_at + DIGEST * self.n

    def head(self) -> list[int | str]:
        return [self.name, self.n, self.bits, self.table_crc, self.digests_crc]

    @classmethod
    def from_head(cls, entry: object) -> IdFile | None:
        """One entry of a checkpoint's head, as the untrusted file it was read from: a name
        that is a file of this folder, a count, a shape a lookup can use."""
        if not (isinstance(entry, list) and len(entry) == 5):
            return None
        name, n, bits, table_crc, digests_crc = entry
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            return None  # ("../../x", "/etc/x", a link's name: never opened)
        numbers = (n, bits, table_crc, digests_crc)
        if not all(type(x) is int for x in numbers):
            return None
        crcs_fit = 0 <= table_crc < 1 << 32 and 0 <= digests_crc < 1 << 32
        if not (n > 0 and 8 <= bits <= 64 and crcs_fit):
            return None
        return cls(name, n, bits, table_crc, digests_crc)


def serial(name: str) -> int:
    match = NAME.fullmatch(name)
    return int(match.group(1)) if match else -1


def write_new(
    folder: Path,
    parts: Sequence[Part],
    most: int,
    taken: Sequence[IdFile],
    *,
    durable: bool = True,
) -> IdFile:
    """``write`` under a name no file of the folder nor ``taken`` has: a file merged away may
    still be mapped by this run, and a name is never given twice."""
    names = [file.name for file in taken] + os.listdir(folder)
    number = 1 + max([0, *(serial(name) for name in names)])  # from 1
    return write(folder, f"resume-{number}.ids", parts, most, durable=durable)


def stack(
    folder: Path,
    files: Sequence[IdFile],
    parts: Sequence[Part],
    most: int,
    merge: Sequence[IdFile] = (),
) -> list[IdFile]:
    """``files`` (oldest first) with one more, written and synced: the ids of ``parts`` (at
    most ``most``) and of the files ``merge``, with the newest of ``files`` merged in while
    they are not much larger (``GROWTH``) or too many (``MAX_FILES``). So N ids written k at a
    time are held in about log4(N / k) files, and each id is rewritten about as many times."""
    kept, merged = list(files), list(merge)
    most += sum(file.n for file in merged)
    if not most:
        return kept
    while kept and (kept[-1].n <= GROWTH * most or len(kept) >= MAX_FILES):
        merged.append(kept.pop())
        most += merged[-1].n
    sources, closers = list(parts), []
    try:
        for file in merged:
            part, close = reader(folder, file)
            sources.append(part)
            closers.append(close)
        kept.append(write_new(folder, sources, most, [*files, *merge]))
    finally:
        for close in closers:
            close()
    fsync_dir(folder)
    return kept


def write(
    folder: Path, name: str, parts: Sequence[Part], most: int, *, durable: bool = True
) -> IdFile:
    """Write the union of ``parts`` (at most ``most`` digests in all) as the file ``name``,
    one first byte at a time, and make it durable unless told not to (its folder is synced by
    the caller, once the checkpoint naming it is written)."""
    shape = Shape.of(most)
    blank = IdFile(name, 0, shape.bits, 0, 0)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    table_crc = digests_crc = 0
    count = 0
    with open(tmp, "wb") as fh:
        for first in range(256):
            digests, starts = shape.sort(first, b"".join(part(first) for part in parts), count)
            fh.seek(8 * first * shape.per_part)
            fh.write(starts)
            table_crc = zlib.crc32(starts, table_crc)
            fh.seek(blank.digests_at + DIGEST * count)
            fh.write(digests)
            digests_crc = zlib.crc32(digests, digests_crc)
            count += len(digests) // DIGEST
        end = array.array("Q", [count])
        fh.seek(8 * shape.groups)
        fh.write(end)
        table_crc = zlib.crc32(end, table_crc)
        fh.truncate(blank.digests_at + DIGEST * count)  # (zeros after the table if none)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    return IdFile(name, count, shape.bits, table_crc, digests_crc)


def reader(folder: Path, file: IdFile) -> tuple[Part, Callable[[], None]]:
    """A merge's source reading ``file`` one first byte at a time, and what closes it. Read,
    not mapped: a fresh run's memory must not grow with the pages of every file it merges."""
    fh = open_state_file(folder / file.name)
    per_part = file.shape.per_part

    def part(first: int) -> bytes:
        fh.seek(8 * first * per_part)
        lo = int.from_bytes(fh.read(8), sys.byteorder)
        fh.seek(8 * (first + 1) * per_part)
        hi = int.from_bytes(fh.read(8), sys.byteorder)
        if not 0 <= lo <= hi <= file.n:
            raise ValueError(f"{file.name}: a damaged table")
        fh.seek(file.digests_at + DIGEST * lo)
        return fh.read(DIGEST * (hi - lo))

    return part, fh.close


def in_memory(layer: Layer) -> Part:
    """A merge's source reading a layer held in memory (or mapped)."""
    digests, table, shift, _n = layer
    per_part = 1 << (128 - shift - 8)

    def part(first: int) -> bytes | bytearray:
        return digests[DIGEST * table[first * per_part] : DIGEST * table[(first + 1) * per_part]]

    return part


def checked(folder: Path, file: IdFile) -> bool:
    """Whether ``file`` is whole and as its checkpoint wrote it: its size, its CRC-32s, and the
    two table entries a lookup's bounds rest on (read in blocks, never held)."""
    try:
        with open_state_file(folder / file.name) as fh:
            if os.fstat(fh.fileno()).st_size != file.size:
                return False  # (before reading: a hostile count or shape reads nothing)
            table_crc = crc32_of(fh, 0, file.table_bytes)
            fh.seek(0)
            first = int.from_bytes(fh.read(8), sys.byteorder)
            fh.seek(file.table_bytes - 8)
            last = int.from_bytes(fh.read(8), sys.byteorder)
            digests_crc = crc32_of(fh, file.digests_at, DIGEST * file.n)
    except (OSError, ValueError):
        return False
    return (table_crc, digests_crc, first, last) == (
        file.table_crc,
        file.digests_crc,
        0,
        file.n,
    )


def mapped(folder: Path, file: IdFile) -> Layer:
    """``file`` as a layer a lookup reads through read-only maps (see ``checked`` first)."""
    with open_state_file(folder / file.name) as fh:
        fd = fh.fileno()
        table = mmap.mmap(fd, file.table_bytes, access=mmap.ACCESS_READ)
        digests = mmap.mmap(fd, DIGEST * file.n, access=mmap.ACCESS_READ, offset=file.digests_at)
    return digests, memoryview(table).cast("Q"), file.shape.shift, file.n


def crc32_of(fh: BinaryIO, start: int, size: int, crc: int = 0) -> int:
    """The CRC-32 of ``size`` bytes of ``fh`` from ``start``, continuing ``crc``. Read in
    blocks, not mapped: a map's pages would count in the process's RSS."""
    fh.seek(start)
    while size > 0:
        block = fh.read(min(size, BLOCK))
        if not block:
            break
        crc = zlib.crc32(block, crc)
        size -= len(block)
    return crc
