"""Duplicate record ids within one run, found in bounded memory.

Rows, resume, ``repost`` and ``--retry-errors`` are all keyed on the record id, so two records
sharing one (a ``data.id`` that is not unique, or two equal records without one) give two rows
under one id, and a resumed run takes the second for done. The reader asks ``SeenIds.add``
about every record it reads.

An exact set of ids costs about 60 bytes an id (6 GB at 10^8 records), so the ids seen go into
Bloom filters instead: a small one first (1 MiB), each next one twice as large when the last
holds 1 id per 48 bits, up to ``TIERS`` (85 MiB in all, the last 54 MiB); the last then takes
every further id. At 10^6 records that is 7 MiB (with tiers four times larger each, it was 21:
most of the 10^6-record run's growth, benchmarks/README.md, "Memory"). False alarms, for a new
id: 2 in 10^6 at 10^6 records, 5 in 10^6 at 1.5 x 10^7, 3 in 10^4 at 3 x 10^7 (four-fold tiers:
2, 4 and 2); past that the last filter fills up (1 in 6 at 10^8, was 1 in 10) and the counts
say they may include false alarms. So a repeated id is a
warning and the record still runs: a false alarm must never cost a record its row. The first
few repeats are named with their place; after those come counts at 10, 100, 1000, ..., so a
file of equal ids does not flood the terminal or the run log.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

MIB = 1 << 23  # bits
TIERS = (MIB, 2 * MIB, 4 * MIB, 8 * MIB, 16 * MIB, 54 * MIB)
BITS_PER_ID = 48  # a full tier, with 7 hashes: ~1e-6 false alarms
HASHES = 7
_WORDS = struct.Struct(f"<{HASHES}I").unpack
NAMED = 5  # repeats warned about one by one; then counts at 10, 100, 1000, ...


class _Filter:
    def __init__(self, bits: int) -> None:
        self.bits = bytearray(bits // 8)
        self.size = bits  # any number of bits up to 2**32 (54 MiB is no power of two)
        self.capacity = bits // BITS_PER_ID
        self.count = 0

    def test_and_set(self, positions: tuple[int, ...], add: bool) -> bool:
        """Whether every bit at ``positions`` (HASHES 32-bit words of a digest, cut to this
        filter's size) is set; sets them with ``add``."""
        bits, size, found = self.bits, self.size, True
        for n in positions:
            n %= size
            byte, bit = n >> 3, 1 << (n & 7)
            old = bits[byte]
            if not old & bit:
                if not add:
                    return False
                found = False
                bits[byte] = old | bit
        return found


class SeenIds:
    """Ids read so far in this run (probably): ``add`` warns when one comes again."""

    def __init__(self, warn: Callable[[str], None], tiers: tuple[int, ...] = TIERS) -> None:
        self._tiers = list(tiers)
        self._filters = [_Filter(self._tiers.pop(0))]
        self._warn = warn
        self.repeats = 0

    def add(self, rid: str, where: str) -> bool:
        """Record ``rid``; True (and a warning) when it was, very probably, seen before."""
        digest = hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=28).digest()
        h = _WORDS(digest)  # the same positions as 32-bit slices of the digest as an integer
        filters = self._filters
        last = filters[-1]
        seen = last.test_and_set(h, add=True)
        if not seen and len(filters) > 1:
            seen = any(f.test_and_set(h, add=False) for f in filters[:-1])
        if seen:
            self.repeats += 1
            self._tell(rid, where)
            return True
        last.count += 1
        if last.count >= last.capacity and self._tiers:
            filters.append(_Filter(self._tiers.pop(0)))
        return False

    def _tell(self, rid: str, where: str) -> None:
        n = self.repeats
        if n <= NAMED:
            self._warn(
                f"duplicate id {rid!r} at {where}: an earlier record of this run has the same "
                "id, so both rows carry it (give each record a unique data.id: "
                "docs/output.md#ids)"
            )
        elif str(n).rstrip("0") == "1":  # 10, 100, 1000, ...
            last = self._filters[-1]
            unsure = not self._tiers and last.count > last.capacity
            self._warn(
                f"{n:,} records so far repeat an earlier record's id (latest: {where})"
                + ("; past this many ids the count includes false alarms" if unsure else "")
            )
