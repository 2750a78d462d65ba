"""The record stream: the one way every mode and command reads a recipe's records.

    loader.records() --> ids (data.id, or a content hash) --> selection --> Work items
                         (filter, shard, sample, offset, limit: llmrun/recipe/selection.py)

Direct, batch and auto modes, ``plan``, ``validate``, ``status`` and ``serve`` all read records
through :func:`selected`, so they agree on which records a recipe covers. A record that cannot be
sent (unreadable, no id, a filter that fails on it) stays in the stream as a ``Work`` with an
``error``: the run writes an error row for it, never drops it silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..components import Loader
from ..recipe.model import Recipe
from ..recipe.selection import Selection, selection_of
from ..values import SourceRecord
from .ids import missing_id, record_id


@dataclass(slots=True)
class Work:
    """A record on its way through the run: its id, fields (None when unreadable), where it
    is in the input, why it cannot be sent (if so), and when a worker took it up."""

    id: str
    data: dict[str, Any] | None
    where: str
    error: str | None
    started_at: str | None = None
    done: bool = False  # already in the output: counted by the selection, never sent


def work_item(rec: SourceRecord, id_field: str | None) -> Work:
    """The loader's record as a Work item; one without an id is an error item."""
    if rec.data is None:
        return Work(rec.where, None, rec.where, rec.error or "unreadable record")
    rid = record_id(rec.data, id_field)
    if rid is None:
        assert id_field is not None  # a content hash is never None
        return Work(rec.where, rec.data, rec.where, missing_id(rec.data, id_field))
    return Work(rid, rec.data, rec.where, rec.error)


def selection(recipe: Recipe, limit: int | None = None) -> Selection:
    """The recipe's selection; ``limit`` (``--limit``) replaces ``data.limit``."""
    return selection_of(recipe, limit)


def selected(
    recipe: Recipe,
    loader: Loader,
    *,
    limit: int | None = None,
    whole_sample: bool = True,
    skip: Container[str] | None = None,
    start: tuple[int, int] | None = None,
) -> Generator[Work, None, None]:
    """The records the recipe covers, lazily, as Work items. Closing the generator closes the
    loader's stream (its files), whenever the caller stops.

    ``whole_sample=False`` leaves out a sample *by count*, which reads the whole source before
    the first record: for checks that only look at the first few records (``validate``).

    ``skip`` (the ids already done, on resume): when the loader can tell a record's id before
    parsing it (``ids_first``, the JSONL loader) and the selection reads no fields (no
    ``data.filter``), a record whose id is in ``skip`` is never parsed: it comes as a Work with
    ``done`` set and no data, so offset, limit and the count of selected records are what
    they would be (issue 14: parsing 10^6 done records was a third of a resume).

    ``start`` (byte offset, lines before it; with ``skip``): read the source from there, the
    records before it being done (the resume checkpoint, job/checkpoint.py); ValueError when
    the loader cannot."""
    chosen = selection(recipe, limit)
    if not whole_sample and chosen.sample_count is not None:
        chosen = dataclasses.replace(chosen, sample=None)
    id_field = recipe.id_field
    keyed = getattr(loader, "ids_first", None)
    fast = None
    if skip is not None and keyed is not None and id_field is not None and not chosen.filter:
        fast = keyed(id_field) if start is None else keyed(id_field, start)
    if start is not None and fast is None:
        raise ValueError("this loader cannot start reading past the beginning")
    records: Iterator[Any]
    stream: Iterator[Work]
    if fast is None or id_field is None or skip is None:
        records = loader.records()
        stream = (work_item(rec, id_field) for rec in records)
    else:
        records = fast
        stream = _skipping(fast, getattr(loader, "record_at"), id_field, skip)  # noqa: B009
    items = chosen.select(
        stream,
        key=_key,
        on_error=lambda w, message: Work(w.id, w.data, w.where, message),
    )
    try:
        yield from items
    finally:
        items.close()
        close = getattr(records, "close", None)
        if close is not None:  # a generator's files close now, not at garbage collection
            close()


def _skipping(
    keyed: Iterator[tuple[str | None, int, bytes]],
    record_at: Callable[[int, bytes], SourceRecord | None],
    id_field: str,
    skip: Container[str],
) -> Iterator[Work]:
    for rid, lineno, line in keyed:
        if rid is not None and rid in skip:
            yield Work(rid, None, "", None, done=True)
            continue
        rec = record_at(lineno, line)
        if rec is not None:
            yield work_item(rec, id_field)


def _key(work: Work) -> tuple[str, Mapping[str, Any] | None]:
    # An item that cannot be sent is never filtered out: its error row must be written.
    return work.id, None if work.error is not None else work.data


def count_selected(recipe: Recipe, loader: Loader, *, limit: int | None = None) -> int | None:
    """How many records the recipe covers: from the loader's cheap count when the selection
    allows it, else by streaming the selection (ids only are kept, one at a time)."""
    chosen = selection(recipe, limit)
    if chosen.needs_count():
        count = getattr(loader, "count", None)
        total = count() if count is not None else None
        if total is not None:
            return chosen.total(total)
    stream = selected(recipe, loader, limit=limit)
    try:
        return sum(1 for _ in stream)
    finally:
        stream.close()
