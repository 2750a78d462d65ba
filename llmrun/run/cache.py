"""The call cache: a reply found for the exact request a provider would send is not sent again.

The key is the SHA-256 of the request as it would go on the wire, without its credentials:

- the method and the URL (scheme, host, port, path, the query sorted), which name the endpoint;
- the headers that can change the answer (an API version, a beta flag, an organisation), that
  is every header except those that only say how the bytes travel (``TRANSPORT_HEADERS``) and
  those that carry credentials (``authorization``, ``x-api-key``... any name with a secret
  word in it, any value holding a secret of the recipe);
- the body, JSON re-encoded with sorted keys (so two llmrun versions that order keys
  differently still match; a body that is not JSON counts byte for byte).

The Caller builds the request for the key with a stand-in key (``STAND_IN_KEY``), never a real
one, so no key can reach the cache whatever a provider does with it; a header or query value
holding the stand-in is left out like an auth header. The model is in the body (or the URL), so
nothing else is needed: the same request sent by another recipe, another output or a later step
of the same job hits the same entry.

A sampled request (temperature above 0, or not given, so the server's default of 1 applies, and
no seed) is not cached unless ``cache.sampled: true``: its answer is one draw among many, and
reusing it would quietly turn every later "sample" into a copy of the first. A request that asks
for no sampling (an embedding, a body with no ``messages``/``prompt``/``contents``) is cached.

Values are the normalized ``Reply`` as JSON (``raw`` included, so ``output.raw: true`` rows are
the same from the cache), with the recipe's secrets replaced by their fingerprints in case a
server echoed one. Only replies the provider parsed as a success are stored: an error answer is
never cached.

Lookups and stores from all workers go to the database in batches, one batch at a time, off the
event loop (see ``CallCache._lead``): under load, one thread hop and one transaction serve many
calls.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from ..recipe.model import CacheSettings
from ..redaction import Redactor
from ..values import Reply, Usage
from .cachedb import CacheDB

KEY_VERSION = b"llmrun-cache-key/1\n"
# What the request for the key is built with instead of a real key (see the module doc).
STAND_IN_KEY = "llmrun-cache-stand-in-key"
# How the bytes travel, not what is asked.
TRANSPORT_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "accept-encoding",
        "user-agent",
    }
)
SECRET_WORDS = ("key", "token", "secret", "password", "auth", "cookie", "signature", "credential")
# Bodies with one of these ask a model to generate text, so an unset temperature samples.
GENERATES = ("messages", "prompt", "contents")
HEADS_KEPT = 64  # method+URL+headers combinations remembered (a run has one or a few)
USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class RequestKey:
    digest: bytes  # 32 bytes of SHA-256
    sampled: bool  # the answer is a random draw (see the module doc)


class RequestKeys:
    """Computes request keys (the call is ``request_key``). The part of a key that depends on the
    method, URL and headers is the same for nearly every request of a run: it is kept, by those
    exact bytes (Content-Length left out), for the next requests."""

    def __init__(self, secret: Callable[[str], bool] = lambda value: False) -> None:
        self._secret = secret
        self._heads: dict[tuple[Any, ...], bytes] = {}

    def __call__(self, request: httpx.Request) -> RequestKey | None:
        """The cache key of a request built with ``STAND_IN_KEY``; None when its body cannot
        be read (a streamed upload)."""
        try:
            body = request.content
        except httpx.RequestNotRead:
            return None
        raw = tuple(h for h in request.headers.raw if h[0].lower() != b"content-length")
        memo = (request.method, str(request.url), raw)
        head = self._heads.get(memo)
        if head is None:
            if len(self._heads) >= HEADS_KEPT:
                self._heads.clear()
            head = self._heads[memo] = self._head(request)
        parsed: Any = None
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, RecursionError):
            canonical = body
        else:
            # ensure_ascii: a lone surrogate from the input encodes like any other character.
            canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(head)
        digest.update(canonical)
        return RequestKey(digest.digest(), _sampled(parsed))

    def _head(self, request: httpx.Request) -> bytes:
        """What the key takes from the method, URL and headers, as bytes."""
        url = request.url
        query = sorted(
            (name, value)
            for name, value in url.params.multi_items()
            if not _secret(name, value, self._secret)
        )
        headers = sorted(
            (name, value)
            for name, value in ((k.lower(), v) for k, v in request.headers.items())
            if name not in TRANSPORT_HEADERS and not _secret(name, value, self._secret)
        )
        head = [request.method.upper(), url.scheme, url.host, str(url.port or ""), url.path]
        head += [f"{n}={v}" for n, v in query]
        head += [f"{n}: {v}" for n, v in headers]
        # JSON-encoded: no field can run into the next however it is spelled.
        return KEY_VERSION + json.dumps(head).encode() + b"\n"


def request_key(
    request: httpx.Request, secret: Callable[[str], bool] = lambda value: False
) -> RequestKey | None:
    """The cache key of one request built with ``STAND_IN_KEY`` (see ``RequestKeys``)."""
    return RequestKeys(secret)(request)


def _secret(name: str, value: str, secret: Callable[[str], bool]) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) or STAND_IN_KEY in value or secret(value)


def _sampled(body: Any) -> bool:
    """Whether the request draws its answer at random: a temperature above 0 (or none, where
    the body asks for generated text: the servers' default is 1) and no seed."""
    if not isinstance(body, dict):
        return True  # not a JSON object: nothing says it is deterministic
    config = body.get("generationConfig")  # Gemini's place for them
    where = config if isinstance(config, dict) else body
    if where.get("seed") is not None:
        return False
    temperature = where.get("temperature")
    if temperature is None:
        return any(k in body for k in GENERATES)
    return not isinstance(temperature, int | float) or temperature > 0


def dump_reply(reply: Reply) -> str | None:
    """The reply as stored; None when it cannot be (a plugin's raw that is not JSON)."""
    data = {
        "text": reply.text,
        "finish_reason": reply.finish_reason,
        "usage": {k: getattr(reply.usage, k) for k in USAGE_FIELDS},
        "model": reply.model,
        "request_id": reply.request_id,
        "choices": reply.choices,
        "tool_calls": reply.tool_calls,
        "parsed": reply.parsed,
        "vector": reply.vector,
        "raw": reply.raw,
    }
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def load_reply(text: str) -> Reply | None:
    """A stored reply; None when the entry is not one (a damaged or foreign entry is a miss)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict) or not all(
        isinstance(usage.get(k), int | None) for k in USAGE_FIELDS
    ):
        return None
    strings = ("text", "finish_reason", "model", "request_id")
    if not all(isinstance(data.get(k), str | None) for k in strings):
        return None
    choices, calls, vector = data.get("choices"), data.get("tool_calls"), data.get("vector")
    if not (
        _list_of(choices, str | None) and _list_of(calls, dict) and _list_of(vector, int | float)
    ):
        return None
    return Reply(
        text=data.get("text"),
        finish_reason=data.get("finish_reason"),
        usage=Usage(**{k: usage.get(k) for k in USAGE_FIELDS}),
        model=data.get("model"),
        request_id=data.get("request_id"),
        choices=choices,
        tool_calls=calls,
        parsed=data.get("parsed"),
        vector=vector,
        raw=data.get("raw"),
    )


def _list_of(value: Any, kind: Any) -> bool:
    """None, or a list of ``kind``."""
    return value is None or (isinstance(value, list) and all(isinstance(v, kind) for v in value))


@dataclass(slots=True, eq=False)
class _Op:
    """A lookup (``stored`` None until answered) or a store (``stored`` the reply's JSON)."""

    key: bytes
    put: bool
    stored: str | None = None
    wake: anyio.Event | None = None  # set for a caller that waits for the answer
    lead: bool = False  # woken to lead the next batches
    done: bool = False


class CallCache:
    """The cache as a run uses it: ``key`` (on the loop), ``get`` and ``put`` (batched off it).

    A failure of the file (a full disk, a damaged database) is warned about once and turns the
    cache off for the rest of the run: calls are then sent as without a cache.
    """

    def __init__(
        self,
        db: CacheDB,
        *,
        sampled: bool,
        secrets: Iterable[str] = (),
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._db = db
        self._sampled = sampled
        secrets = {s for s in secrets if s}
        # A secret inside JSON shows escaped (a quote, a backslash, non-ASCII): replace both forms.
        self._redact = Redactor({*secrets, *(json.dumps(s)[1:-1] for s in secrets)})
        self._warn = warn
        self._warned_sampled = False
        self._keys = RequestKeys(self._is_secret)
        self._broken: str | None = None  # why the file failed, once it did
        self._warned_broken = False
        self._pending: list[_Op] = []
        self._leading = False
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(
        cls,
        settings: CacheSettings,
        *,
        secrets: Iterable[str] = (),
        warn: Callable[[str], None] = lambda message: None,
    ) -> CallCache:
        """Open (or create) the cache file, at start-up (it blocks); CacheError when the file
        cannot be used."""
        db = CacheDB(settings.path, max_bytes=settings.max_bytes)
        return cls(db, sampled=settings.sampled, secrets=secrets, warn=warn)

    def key(self, request: httpx.Request) -> bytes | None:
        """The key of a request built with ``STAND_IN_KEY``; None when it is not to be cached."""
        if self._broken is not None:
            return None
        found = self._keys(request)
        if found is None:
            return None
        if found.sampled and not self._sampled:
            if not self._warned_sampled:
                self._warned_sampled = True
                self._warn(
                    "cache: sampled requests (temperature above 0 or not set, and no seed) are "
                    "neither looked up nor stored; set generation.temperature: 0 or a seed, or "
                    "cache: {path: ..., sampled: true} to cache them anyway"
                )
            return None
        return found.digest

    def _is_secret(self, value: str) -> bool:
        return self._redact(value) != value

    async def get(self, key: bytes) -> Reply | None:
        """The stored reply for ``key``, or None."""
        op = _Op(key, put=False)
        await self._submit(op, wait=True)
        reply = None if op.stored is None else load_reply(op.stored)
        if reply is None:
            self.misses += 1
        else:
            self.hits += 1
        return reply

    async def put(self, key: bytes, reply: Reply) -> None:
        """Store ``reply`` under ``key`` (as it is now: it is serialised at once). Returns once
        it is committed, so a row written after it always has its reply in the cache: a run
        killed after writing the row never leaves a paid reply out of the cache."""
        stored = dump_reply(reply)
        if stored is None or self._broken is not None:
            return
        await self._submit(_Op(key, put=True, stored=self._redact(stored)), wait=True)

    async def aclose(self) -> None:
        """Write what is queued, then close the file."""
        await self._submit(_Op(b"", put=False), wait=True)  # a lookup of no key: a barrier
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._db.close)

    # -- batching -------------------------------------------------------------------------

    async def _submit(self, op: _Op, *, wait: bool) -> None:
        """Queue ``op``; when no batch is being written, write batches until ``op`` is done.

        One caller at a time leads: it takes everything queued as one batch to a worker
        thread, answers that batch's callers, and goes on while its own op is not done. Then it
        hands the lead to a caller still waiting, if any (else it writes the rest itself), so no
        caller serves others for long. Shielded: a batch taken is always answered, so nobody
        waits forever for a leader that was cancelled.
        """
        with anyio.CancelScope(shield=True):
            if wait:
                op.wake = anyio.Event()
            self._pending.append(op)
            if self._leading:
                if not wait:
                    return
                await op.wake.wait()  # type: ignore[union-attr]
                if not op.lead:
                    return
            self._leading = True
            await self._lead(op)

    async def _lead(self, mine: _Op) -> None:
        while self._pending:
            if mine.done:
                heir = next((o for o in self._pending if o.wake is not None), None)
                if heir is not None:
                    heir.lead = True  # the lead passes on; _leading stays set
                    heir.wake.set()  # type: ignore[union-attr]
                    return
            batch, self._pending = self._pending, []
            found = await anyio.to_thread.run_sync(self._exchange, batch)
            for op in batch:
                op.done = True
                if not op.put:
                    op.stored = found.get(op.key)
                if op.wake is not None and op is not mine:
                    op.wake.set()
        self._leading = False
        if self._broken is not None and not self._warned_broken:
            self._warned_broken = True
            self._warn(f"cache: {self._broken}; going on without it")

    def _exchange(self, batch: list[_Op]) -> dict[bytes, str]:
        """In a worker thread: one batch against the file."""
        if self._broken is not None:
            return {}
        gets = [op.key for op in batch if not op.put and op.key]
        puts = [(op.key, op.stored) for op in batch if op.put and op.stored is not None]
        try:
            return self._db.exchange(gets, puts, time.time())
        except Exception as exc:  # sqlite3.Error, OSError: a full disk, a damaged file
            self._broken = f"{type(exc).__name__}: {exc}"
            return {}
