"""``run.concurrency``: how many calls are in flight at once (the Caller's slots)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio


class Slots:
    """At most ``size`` holders at once, first come first served.

    anyio's CapacityLimiter passes through the event loop on every acquire, even with a slot
    free, and tracks its borrowers: about a tenth of a request's CPU under cProfile in the
    realistic benchmark. A free slot here is taken without yielding (the request sent right
    after yields), and a released one goes straight to the longest waiter.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: deque[anyio.Event] = deque()

    async def __aenter__(self) -> None:
        if self._free and not self._waiting:
            self._free -= 1
            return
        await _queue_up(self._waiting, self._release)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiting:
            self._waiting.popleft().set()  # the slot passes to it: never free in between
        else:
            self._free += 1


class Gate:
    """How many records the workers hold at once: ``size``, plus one for each record that
    waits without a slot (backing off, or waiting for an identical request's reply).

    The engine runs more workers than ``run.concurrency`` so that a record backing off leaves
    its slot to a new record; when every worker took a record as soon as it could, the extras
    held records waiting for a slot, and every request paid a hand-over of its slot to one of
    them: a wake-up of another task, about 14% of a realistic request's instructions
    (benchmarks/README.md). Through the gate, the extra workers wait without a record until a
    record steps aside, and a worker keeps its place from one record to the next.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._held = 0
        self._waiting: deque[anyio.Event] = deque()

    async def enter(self) -> None:
        if self._held < self._size and not self._waiting:
            self._held += 1
            return
        await _queue_up(self._waiting, self.leave)

    def over(self) -> bool:
        """More records held than the gate lets in now: a worker should step out."""
        return self._held > self._size

    def leave(self) -> None:
        self._held -= 1
        self._admit()

    def resize(self, change: int) -> None:
        """``+1`` when a held record starts waiting without a slot, ``-1`` when it is done."""
        self._size += change
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._held < self._size:
            self._held += 1
            self._waiting.popleft().set()


async def _queue_up(waiting: deque[anyio.Event], pass_on: Callable[[], None]) -> None:
    """Wait at the back of ``waiting`` until handed a place (the event set). Cancelled: out
    of the queue, or, when the place was handed over in the same step, ``pass_on`` gives it
    to the next."""
    handed = anyio.Event()
    waiting.append(handed)
    try:
        await handed.wait()
    except BaseException:
        if handed.is_set():
            pass_on()
        else:
            waiting.remove(handed)
        raise
