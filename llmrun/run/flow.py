"""Direct calls, record by record: one reader, the workers, one writer (``RecordFlow``).

    reader --(chunks of records)--> workers (run.concurrency x 5) --(rows)--> writer
                                        |                                    |
                          render, call with retries,           append + hand to the OS,
                          postprocess: always a row            the resume frontier

The reader hands the workers a chunk of records at a time; only ``run.concurrency`` workers
hold a record at once, plus one for each record waiting without a slot (``slots.Gate``): the
others wait without one, so a finished request never hands its slot to another task. Streams
between the stages are bounded, so memory stays flat whatever the input size. The writer is
the only task that touches the output; a row reaches the OS as soon as the writer sees it.
The run around it (components, resume, batch phase, signals, the summary) is ``engine.py``'s.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import RunAborted
from ..job.checkpoint import Frontier
from ..job.records import Work
from ..job.store import IdSet, now_iso
from ..values import Row
from .calls import NotSent
from .slots import Gate
from .stages import describe

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..components import Loader
    from ..job.dupes import SeenIds
    from ..job.output import RowSink
    from ..job.stats import RunStats
    from ..recipe.model import Recipe
    from ..recipe.templates import PromptTemplate
    from .resume import Resume
    from .stages import Stages
    from .watch import RunFlags


class Run(Protocol):
    """What the flow takes from its run (``engine.Engine``), named here so that this module
    need not import the engine that builds it."""

    recipe: Recipe
    flags: RunFlags
    stats: RunStats
    resume: Resume
    loader: Loader
    template: PromptTemplate
    sink: RowSink
    seen: SeenIds

    @property
    def stages(self) -> Stages: ...

    def warn(self, message: str) -> None: ...

    def abort(self, exc: RunAborted) -> None: ...

    def records(
        self,
        *,
        dupes: bool = True,
        skip: IdSet | None = None,
        start: tuple[int, int] | None = None,
    ) -> Generator[Work, None, None]: ...


READ_CHUNK = 256
FIELD_CHECK = 20  # records the run-start check of the template looks at
WRITE_BATCH = 512


class RecordFlow:
    """The records of a direct run in motion, for one run (``engine.Engine``)."""

    def __init__(self, engine: Run) -> None:
        self.engine = engine
        # run.concurrency records held by the workers, and one more for each that waits
        # without a slot (the Caller says when: its on_waiting).
        self.gate = Gate(engine.recipe.run.concurrency)
        self.reader_scope: CancelScope | None = None  # cancelled to read no more
        self.workers_scope: CancelScope | None = None  # its deadline: the drain after a stop
        self.frontier: Frontier | None = None  # how far every record has its row (resume)
        self.read_all: int | None = None  # the records taken, once every line was read
        self._gathering = anyio.Lock()  # a grouping provider's workers fill groups in turn
        self._pending: deque[Work] = deque()  # the chunk of records the workers take from
        self._fetching = anyio.Lock()  # one worker at a time waits for the reader's next chunk

    async def run(self, done: IdSet) -> None:
        """Every selected record not in ``done``, to its row."""
        engine = self.engine
        size = engine.recipe.run.concurrency * 2
        # Records go to the workers a chunk at a time (see _next): one chunk ahead.
        work_send, work_recv = anyio.create_memory_object_stream[list[Work]](1)
        row_send, row_recv = anyio.create_memory_object_stream[Row](size)
        self.frontier = engine.resume.track()
        async with anyio.create_task_group() as pipeline:
            pipeline.start_soon(self._read, work_send, done)
            pipeline.start_soon(self._write, row_recv)
            async with anyio.create_task_group() as workers:
                self.workers_scope = workers.cancel_scope
                async with work_recv, row_send:
                    # Records backing off hold no slot (calls.py): more workers than slots.
                    for _ in range(engine.stages.caller.workers):
                        workers.start_soon(self._work, work_recv.clone(), row_send.clone())

    async def _read(self, send: MemoryObjectSendStream[list[Work]], done: IdSet) -> None:
        engine = self.engine
        with anyio.CancelScope() as scope:
            self.reader_scope = scope
            items = engine.records(dupes=False, skip=done, start=engine.resume.start)
            try:
                await self._read_records(items, send, done)
            finally:
                items.close()

    async def _read_records(
        self, items: Iterator[Work], send: MemoryObjectSendStream[list[Work]], done: IdSet
    ) -> None:
        """Send the selected records that are not done yet to the workers; after the first
        chunk, warn when those records lack fields the prompt uses."""
        engine = self.engine
        async with send:
            checked = False
            # Records before the checkpoint's end of the input were all taken and are done.
            selected = engine.resume.selected_before
            while not engine.flags.stopping:
                try:
                    chunk = await anyio.to_thread.run_sync(
                        list, itertools.islice(items, READ_CHUNK)
                    )
                except Exception as exc:  # a missing file, a loader plugin's bug
                    loader = engine.recipe.data.name
                    message = f"cannot read the records ({loader} loader): {describe(exc)}"
                    engine.abort(RunAborted(message))
                    return
                if not chunk:
                    # Every selected record has been seen: the total is known now, even when
                    # counting could not tell it in advance (a filter, a shard, a sample).
                    engine.stats.total = self.read_all = selected
                    break
                selected += len(chunk)
                if not checked:
                    checked = self._check_fields(chunk)
                seen = engine.seen
                todo = [work for work in chunk if not (work.done or work.id in done)]
                if self.frontier is not None:
                    self.frontier.read(
                        [work.id for work in todo],
                        engine.loader.read_at,  # type: ignore[attr-defined]
                        selected,
                    )
                for work in todo:
                    # Only records not done are checked for repeats: the Bloom filters cost
                    # ~4 us a record, most of a resume's reading (issue 14). A repeat among
                    # done records was warned about by the run that read it.
                    if work.error is None:
                        seen.add(work.id, work.where)
                if todo:
                    # The whole chunk at once: sent record by record, the reader woke for every
                    # record a worker took from a full channel (an event and a pass of the
                    # loop each). send() always yields first; not when there is room.
                    try:
                        send.send_nowait(todo)
                    except anyio.WouldBlock:
                        await send.send(todo)

    def _check_fields(self, chunk: list[Work]) -> bool:
        """The run-start check of the template against the first records (as ``validate``);
        whether there were any to check (records skipped unparsed on resume have no fields:
        the check waits for the first chunk that has some)."""
        engine = self.engine
        sample = [w.data for w in chunk[:FIELD_CHECK] if w.data is not None and w.error is None]
        if not sample:
            return not any(w.done for w in chunk)
        report = engine.template.field_report(sample)
        if report:
            engine.warn(report)
        return True

    async def _work(
        self,
        recv: MemoryObjectReceiveStream[list[Work]],
        send: MemoryObjectSendStream[Row],
    ) -> None:
        engine = self.engine
        stages, flags, stats = engine.stages, engine.flags, engine.stats  # per record: locals
        group_size = stages.group_size
        gate = self.gate
        inside = False  # this worker's place at the gate, kept from one record to the next
        async with recv, send:
            try:
                while True:
                    if inside and gate.over():
                        gate.leave()
                        inside = False
                    if not inside:
                        await gate.enter()
                        inside = True
                    batch = await self._take(recv, group_size)
                    if not batch:
                        return
                    if flags.stopping:
                        continue  # not started: the next run does it
                    first = batch[0]
                    stats.in_flight += len(batch)
                    started = now_iso()
                    for work in batch:
                        work.started_at = started
                    try:
                        if group_size > 1:
                            rows = await stages.process_group(batch)
                        else:
                            rows = [await stages.process(first)]
                    except NotSent:
                        continue  # not started: the next run does it
                    except RunAborted as exc:
                        engine.abort(exc)
                        return
                    finally:
                        stats.in_flight -= len(batch)
                    for row in rows:
                        try:
                            send.send_nowait(row)
                        except anyio.WouldBlock:
                            # Shielded: a call that finished is paid for, so its row is written
                            # even when a second Ctrl-C or an abort cancels the workers (the
                            # writer is not cancelled). Only a full channel awaits: a scope per
                            # row cost 4% of a request's CPU.
                            with CancelScope(shield=True):
                                await send.send(row)
            finally:
                if inside:
                    gate.leave()

    async def _take(self, recv: MemoryObjectReceiveStream[list[Work]], size: int) -> list[Work]:
        """The next record, or for a grouping provider the next ``size`` records (fewer only
        at the end); empty when there are no more. Workers fill groups one at a time, waiting
        for the reader, so N records make ceil(N / size) requests, not one per idle worker."""
        if size == 1:
            work = self._pending.popleft() if self._pending else await self._next(recv)
            return [] if work is None else [work]
        batch: list[Work] = []
        async with self._gathering:
            while len(batch) < size:
                work = await self._next(recv)
                if work is None:
                    break
                batch.append(work)
        return batch

    async def _next(self, recv: MemoryObjectReceiveStream[list[Work]]) -> Work | None:
        """The next record the reader sent (None after the last): taken from the chunk under
        way, the next chunk fetched by one worker at a time (the others wait behind it, so
        records are taken in their order and at most one chunk more is held)."""
        pending = self._pending
        while not pending:
            try:
                pending.extend(recv.receive_nowait())
            except anyio.WouldBlock:
                async with self._fetching:
                    if not pending:
                        try:
                            pending.extend(await recv.receive())
                        except anyio.EndOfStream:
                            return None
            except anyio.EndOfStream:
                return None
        return pending.popleft()

    async def _write(self, recv: MemoryObjectReceiveStream[Row]) -> None:
        engine = self.engine
        async with recv:
            async for row in recv:
                # One pass of the loop first: rows finishing in it join this batch, so the
                # output is flushed once per batch rather than once per row. Shielded: a row in
                # hand is always written.
                await anyio.lowlevel.cancel_shielded_checkpoint()
                batch = [row]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                engine.sink.write(batch)
                if self.frontier is not None:
                    for written in batch:
                        self.frontier.written(written["id"])
