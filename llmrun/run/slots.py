"""``run.concurrency``: how many calls are in flight at once (the Caller's slots)."""

from __future__ import annotations

from collections import deque
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
        handed = anyio.Event()
        self._waiting.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                self._waiting.remove(handed)
            raise

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
