"""Which records a run takes: ``data.filter``, ``data.shard``, ``data.sample``, ``data.offset``
and ``data.limit``, applied in that order to the loader's stream.

Every decision is a function of the record's id (and the seed), never of its position or of a
random generator's state, so it is the same on every run and every resume, whatever the order
the loader yields records in:

- ``shard: i/n`` keeps the records whose id hashes to ``i`` modulo ``n``: shards 0..n-1 never
  overlap and together cover every record.
- ``sample: 0.1`` (a fraction) keeps a record when the seeded hash of its id, read as a number
  in [0, 1), is below the fraction: streaming, and a larger fraction keeps a superset.
- ``sample: 500`` (a count) keeps the 500 records with the smallest seeded hashes (bottom-k): it
  reads the whole source before the first record is sent, holding at most 500 records, and
  yields them in source order. A larger count keeps a superset too.
- ``offset`` skips, and ``limit`` stops after, that many of the records the steps before kept.

Unreadable records (error rows) go through every step but ``filter``, which cannot look into
them: they are reported in the one shard (or sample) their id falls in.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import jinja2

from ..access import ReadScope
from ..errors import Problem, RecipeError
from .templates import make_environment

if TYPE_CHECKING:  # recipe.py uses this module's parsers
    from .model import Recipe

T = TypeVar("T")
HASH_SPACE = float(1 << 64)


def id_hash(salt: str, record_id: str) -> int:
    """A stable 64-bit hash of a record id (the same on every machine and Python version)."""
    digest = hashlib.blake2b(f"{salt}\0{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8); ValueError unless 0 <= i < n."""
    index, sep, count = str(text).partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"shard must be i/n (e.g. 0/4), got {text!r}")
    i, n = int(index), int(count)
    if n < 1 or i >= n:
        raise ValueError(f"shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def compile_filter(
    source: str, base_dir: Path, scope: ReadScope | None = None
) -> Callable[..., Any]:
    """The filter expression, compiled in the template sandbox (``load()`` confined to
    ``scope``); RecipeError on a syntax error."""
    try:
        return make_environment(base_dir, scope).compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError([Problem(f"filter expression: {exc.message}", "data.filter")]) from None


@dataclass(frozen=True)
class Selection:
    """The recipe's record selection (see the module docstring)."""

    offset: int = 0
    limit: int | None = None
    sample: float | int | None = None
    seed: int = 0
    filter: str | None = None
    shard: tuple[int, int] | None = None
    base_dir: Path = Path()
    scope: ReadScope | None = None  # where the filter's load() may read (default: base_dir)

    @property
    def sample_count(self) -> int | None:
        """The sample's size when it is a count (an int, or a whole float over 1)."""
        s = self.sample
        if isinstance(s, bool) or s is None:
            return None
        if isinstance(s, int) or (isinstance(s, float) and s > 1 and s.is_integer()):
            return int(s)
        return None

    @property
    def sample_fraction(self) -> float | None:
        if self.sample is None or self.sample_count is not None:
            return None
        return float(self.sample)

    def total(self, count: int | None) -> int | None:
        """How many records the selection yields from ``count``, when that can be known."""
        if count is None or self.filter or self.shard or self.sample_fraction is not None:
            return None
        k = self.sample_count
        n = count if k is None else min(count, k)
        n = max(0, n - self.offset)
        return n if self.limit is None else min(n, self.limit)

    def needs_count(self) -> bool:
        """Whether counting the source can tell the total (else the count is not worth it)."""
        return not (self.filter or self.shard or self.sample_fraction is not None)

    def select(
        self,
        items: Iterator[T],
        key: Callable[[T], tuple[str, Mapping[str, Any] | None]],
        on_error: Callable[[T, str], T],
    ) -> Generator[T, None, None]:
        """The items the selection keeps, lazily. ``key`` gives an item's id and its fields
        (None for an unreadable record); ``on_error`` turns an item whose filter failed into
        an error item (it is kept, so the failure is reported, not silently dropped)."""
        stream = items
        if self.filter:
            stream = self._filtered(stream, key, on_error)
        if self.shard is not None:
            index, count = self.shard
            stream = (x for x in stream if id_hash("shard", key(x)[0]) % count == index)
        fraction = self.sample_fraction
        if fraction is not None:
            cut = fraction * HASH_SPACE
            salt = f"sample:{self.seed}"
            stream = (x for x in stream if id_hash(salt, key(x)[0]) < cut)
        k = self.sample_count
        if k is not None:
            stream = self._bottom_k(stream, key, k)
        taken = 0
        skipped = 0
        if self.limit == 0:
            return
        for item in stream:
            if skipped < self.offset:
                skipped += 1
                continue
            yield item
            taken += 1
            if self.limit is not None and taken >= self.limit:
                return

    def _filtered(
        self,
        items: Iterator[T],
        key: Callable[[T], tuple[str, Mapping[str, Any] | None]],
        on_error: Callable[[T, str], T],
    ) -> Iterator[T]:
        assert self.filter is not None
        test = compile_filter(self.filter, self.base_dir, self.scope)
        for item in items:
            data = key(item)[1]
            if data is None:
                yield item
                continue
            try:
                keep = test({**data, "record": data})
            except jinja2.UndefinedError as exc:
                yield on_error(item, f"data.filter: {exc.message}")
                continue
            except Exception as exc:
                yield on_error(item, f"data.filter failed: {type(exc).__name__}: {exc}")
                continue
            if keep:
                yield item

    def _bottom_k(
        self,
        items: Iterator[T],
        key: Callable[[T], tuple[str, Mapping[str, Any] | None]],
        k: int,
    ) -> Iterator[T]:
        salt = f"sample:{self.seed}"
        heap: list[tuple[int, int, T]] = []  # (-hash, -position, item): the k smallest hashes
        for position, item in enumerate(items):
            entry = (-id_hash(salt, key(item)[0]), -position, item)
            if len(heap) < k:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
        for _, _, item in sorted(heap, key=lambda e: -e[1]):
            yield item


def selection_of(recipe: Recipe, limit: int | None = None) -> Selection:
    """The recipe's selection; ``limit`` (from ``--limit``) replaces ``data.limit``."""
    return Selection(
        offset=recipe.offset,
        limit=recipe.limit if limit is None else limit,
        sample=recipe.sample,
        seed=recipe.seed,
        filter=recipe.filter,
        shard=recipe.shard,
        base_dir=recipe.base_dir,
        scope=recipe.access.scope(recipe.base_dir),
    )
