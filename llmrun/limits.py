"""Pacing calls: which key a request uses, and how fast requests may start.

This holds the seam the engine calls through (``KeyPool.pick``, ``RateLimiter.acquire``); the
full per-key request/token limits and adaptive concurrency build on it.
"""

from __future__ import annotations

import itertools

import anyio

from .errors import RunAborted
from .redaction import fingerprint


class KeyPool:
    """API keys in rotation; a rejected key is retired and the run stops when none is left."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys: list[str | None] = list(keys) or [None]
        self._cycle = itertools.cycle(range(len(self._keys)))
        self._retired: dict[str, str] = {}

    def pick(self) -> str | None:
        for _ in range(len(self._keys)):
            key = self._keys[next(self._cycle)]
            if key is None or key not in self._retired:
                return key
        raise RunAborted(self.exhausted_message())

    def retire(self, key: str | None, reason: str) -> bool:
        """Retire a key; True when at least one key is left."""
        if key is None:
            self._retired["<no key>"] = reason
            return False
        self._retired.setdefault(key, reason)
        return any(k not in self._retired for k in self._keys if k is not None)

    def exhausted_message(self) -> str:
        if "<no key>" in self._retired:
            return (
                f"the provider rejected the request without an API key "
                f"({self._retired['<no key>']}); set provider.api_keys"
            )
        details = "; ".join(f"{fingerprint(k)}: {why}" for k, why in self._retired.items())
        return f"every API key was rejected ({details}); fix provider.api_keys"

    @property
    def retired(self) -> dict[str, str]:
        """Fingerprint -> reason, for display."""
        return {fingerprint(k) if k != "<no key>" else k: v for k, v in self._retired.items()}


class RateLimiter:
    """Spaces request starts evenly so no minute holds more than ``per_minute`` of them.

    Even spacing rather than a bucket that starts full: a provider counting over a sliding
    window never sees a burst at start-up.
    """

    def __init__(self, per_minute: float | None) -> None:
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = anyio.current_time()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            await anyio.sleep(start - now)
