"""A lean HTTP/1.1 client for the engine's hot path under asyncio: keep-alive connections as
asyncio protocols, responses parsed by httptools (llhttp, Node's C parser).

Why our own: a provider call is one small JSON POST to one host, repeated millions of times.
aiohttp spends ~85 us of CPU per such request on machinery that job never uses (cookie jars,
redirects, tracing, multidict headers, yarl URLs), httpx's client ~500 us (benchmarks/README.md).
This client does only what the job needs: write the request the provider built (its
``httpx.Request`` already carries Host and Content-Length), read one response, keep the
connection for the next.

What a server may send is untrusted, and an answer must reach the request that asked for it:

- interim answers (``100 Continue``, ``103 Early Hints``) are skipped; the final answer that
  follows is the one returned. ``101 Switching Protocols`` ends the call with an error;
- a byte arriving while a connection sits idle in the pool (an answer nobody asked for) marks the
  connection broken: it is closed, never read as the next request's answer;
- the head (status line and headers, interim answers included), the body as received and the
  body once decoded are capped (``bounds.AnswerLimits``): passing a cap ends the call;
- a body delimited by closing the connection (HTTP/1.0 style) is read to the close;
- a header name or value holding CR, LF or NUL is refused before anything is written;
- a request is sent again on a new connection only when the server provably never saw it: the
  pooled connection was found closed before writing, or the request is idempotent (RFC 9112
  §9.3.1). A POST whose reused connection closes without answering fails as a retryable
  transport error, so the engine's retry policy (attempt counting, backoff) decides.

Proxies: ``transport.default_transport`` sends through httpx when a proxy variable is set.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from typing import Any, cast

import httptools
import httpx

from .bounds import FIRST_BYTE, IDLE_TIMEOUT, AnswerLimits, read_response, too_large

Origin = tuple[str, str, int]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body

# A connection idle this long is not reused: servers close idle keep-alive connections after a
# few seconds (uvicorn 5 s, nginx 75 s), and a close that crosses our write leaves a POST
# unanswered, which is then a paid retry rather than a free one.
IDLE_REUSE_S = 4.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, limits: AnswerLimits) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.limits = limits
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.received = 0  # bytes of the current answer (0: the server may not have seen it)
        self.head_bytes = 0  # bytes before the final answer's body (1xx answers included)
        self.body_bytes = 0
        self.in_head = True
        self.until_close = False  # the body ends when the server closes (HTTP/1.0 style)
        self.error: Exception | None = None  # set in a parser callback, raised after feeding
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        # A streamed answer (IDLE_TIMEOUT): when the last bytes and the first body bytes came.
        self.clock: Any = None
        self.last_data = 0.0
        self.first_body: float | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (uvicorn runs `llmrun serve` on uvloop
        # wherever it is installed) do not subclass asyncio.Transport, and write and abort,
        # all that is used here, are all that is needed.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nobody asked: never let it answer the next request
            self.close()
            return
        self.received += len(data)
        if self.clock is not None:
            self.last_data = self.clock()
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(self.error or httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            return
        if self.error is not None:
            self._fail(self.error)
        elif self.in_head and self.head_bytes > self.limits.max_header_bytes:
            self._fail(too_large("status line and headers", self.limits.max_header_bytes))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.until_close and not self.in_head and exc is None:
            self.waiter = None
            waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))
            return
        reason = f": {exc}" if exc else ""
        if self.received:
            error: Exception = httpx.RemoteProtocolError(
                f"the server closed the connection mid-answer{reason}"
            )
        else:
            error = Unanswered(f"the server closed the connection without answering{reason}")
        waiter.set_exception(error)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer in the bytes that ended the first
            self.headers, self.body = [], []
            self.error = httpx.RemoteProtocolError("the server sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self.error = httpx.RemoteProtocolError("the server switched protocols (101)")
            return  # an interim answer: its headers are dropped when it completes
        self.in_head = False
        limit = self.limits.max_response_bytes
        framed = status in (204, 304)
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                framed = True
                if value.strip().isdigit() and int(value) > limit:
                    self.error = too_large("declared body", limit, "run.max_response_bytes")
            elif lowered == b"transfer-encoding":
                framed = True
        self.until_close = not framed

    def on_body(self, body: bytes) -> None:
        if self.clock is not None and self.first_body is None:
            self.first_body = self.clock()
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_response_bytes:
            if self.error is None:
                self.error = too_large(
                    "body", self.limits.max_response_bytes, "run.max_response_bytes"
                )
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.in_head:  # the end of an interim (1xx) answer: wait for the final one
            self.headers = []
            return
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done() and self.error is None:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result((self.parser.get_status_code(), self.headers, body))

    # -- use ------------------------------------------------------------------------------

    def start(
        self, loop: asyncio.AbstractEventLoop, *, watch: bool = False
    ) -> asyncio.Future[Answer]:
        """Ready for the next answer (the request is written by the pool, ``_post``)."""
        assert self.transport is not None
        self.headers, self.body, self.received = [], [], 0
        self.clock = loop.time if watch else None
        self.last_data, self.first_body = loop.time(), None
        self.head_bytes = self.body_bytes = 0
        self.in_head, self.until_close, self.error = True, False, None
        self.waiter = loop.create_future()
        return self.waiter

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Transport:
    """Sends ``httpx.Request``s over pooled HTTP/1.1 connections (asyncio only)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        limits: AnswerLimits | None = None,
    ) -> None:
        self._max_idle = max_connections
        self._connect_timeout = connect_timeout_s
        self._limits = limits or AnswerLimits()
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._origins: dict[int, tuple[httpx.URL, Origin, bytes]] = {}
        # Answers awaited, with their deadlines, and one timer for the earliest (_watch).
        self._deadlines: dict[asyncio.Future[Answer], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        # Requests of this pass of the loop, written together at the start of the next (_post).
        self._outbox: list[tuple[_Connection, bytes]] = []
        self._posting: asyncio.AbstractEventLoop | None = None  # the loop a write is due on

    def _target(self, url: httpx.URL) -> tuple[Origin, bytes]:
        """(origin, request-target) for a URL; providers reuse a few URL objects."""
        cached = self._origins.get(id(url))
        if cached is not None and cached[0] is url:
            return cached[1], cached[2]
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        port = url.port or (443 if scheme == "https" else 80)
        origin = (scheme, url.host, port)
        if len(self._origins) >= 64:
            self._origins.clear()
        self._origins[id(url)] = (url, origin, url.raw_path)
        return origin, url.raw_path

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        try:
            return await self._send(request, timeout_s)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ReadTimeout) and request.extensions.get(IDLE_TIMEOUT):
                exc.args = (f"nothing streamed for {timeout_s:g} s (run.timeout_s)",)
            elif isinstance(exc, httpx.ReadTimeout):
                exc.args = (f"no complete answer within {timeout_s:g} s (run.timeout_s)",)
            exc.request = request  # as httpx's client does: the error names its request
            raise
        except httpx.RequestError as exc:
            exc.request = request
            raise

    async def _send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        try:
            content = request.content
        except httpx.RequestNotRead:  # built with stream=...: read it (once) like httpx does
            content = await request.aread()
        origin, target = self._target(request.url)
        method = request.method
        raw = request.headers.raw
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head)
        # Each header line ends in the only CR LF it may hold: any other CR, LF or NUL in a name
        # or value would start a header (or a request) of the value's choosing.
        lines = len(raw) + 2
        if data.count(b"\n") != lines or data.count(b"\r") != lines or b"\0" in data:
            raise httpx.LocalProtocolError(_injection(raw))
        if content:
            data += content
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn, reused = self._idle_connection(origin, loop.time()), True
            if conn is None:
                conn, reused = await self._connect(loop, origin, request), False
            idle = bool(request.extensions.get(IDLE_TIMEOUT))
            try:
                # run.timeout_s bounds the answer once connected (a streamed one: each wait
                # for more of it); connecting has its own.
                sent_at = loop.time()
                status, headers, body = await self._exchange(
                    loop, conn, data, sent_at + timeout_s, idle=timeout_s if idle else None
                )
            except Unanswered as exc:
                conn.close()
                if reused and method in _IDEMPOTENT:
                    continue  # RFC 9112 §9.3.1: an idempotent request may go again
                if reused:
                    raise Unanswered(
                        f"{exc}; a reused connection, and the server may have seen the "
                        f"{method}, so it is not re-sent here"
                    ) from None
                raise
            except BaseException:  # a timeout, a cancelled call: the connection is mid-answer
                conn.close()
                raise
            first_body = conn.first_body
            if conn.keep_alive and not conn.closed:
                self._release(origin, conn, loop.time())
            else:
                conn.close()
            response = read_response(status, headers, body, request, self._limits)
            if idle and first_body is not None:
                response.extensions[FIRST_BYTE] = first_body - sent_at
            return response
        raise Unanswered("the server closed two connections in a row without answering")

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        data: bytes,
        deadline: float,
        *,
        idle: float | None = None,
    ) -> Answer:
        waiter = conn.start(loop, watch=idle is not None)
        self._post(loop, conn, data)
        if idle is None:
            deadlines = self._deadlines
            deadlines[waiter] = deadline
            if self._timer is None or deadline < self._timer_at or self._timer_loop is not loop:
                self._watch(loop, deadline)
            try:
                return await waiter
            finally:
                del deadlines[waiter]
        timers: list[asyncio.TimerHandle] = []

        def check() -> None:
            # Expire only when nothing came for `idle` seconds; else look again then.
            quiet_until = conn.last_data + idle
            if loop.time() >= quiet_until:
                _expire(waiter)
            else:
                timers[0] = loop.call_at(quiet_until, check)

        timers.append(loop.call_at(deadline, check))
        try:
            return await waiter
        finally:
            timers[0].cancel()

    def _post(self, loop: asyncio.AbstractEventLoop, conn: _Connection, data: bytes) -> None:
        """Write ``data`` on ``conn`` with the others of this pass of the event loop, at the
        start of the next. Written at once, each request went out between the handling of
        two answers, ~100 us apart: the server had gone back to sleep by then, so every
        request woke it (measured: 6,500 to 8,000 wake-ups of the server for 20,000 requests,
        against ~950 for an aiohttp loop; a wake-up on another core is a costly system call
        here). Sent together, one wakes it for all."""
        self._outbox.append((conn, data))
        if self._posting is not loop:  # (a loop that ended with a write pending: not waited for)
            self._posting = loop
            loop.call_soon(self._send_posted)

    def _send_posted(self) -> None:
        self._posting = None
        outbox, self._outbox = self._outbox, []
        for conn, data in outbox:
            if not conn.closed and conn.transport is not None:
                conn.transport.write(data)

    def _watch(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Expire the answers past their deadline at ``at``. One timer for every answer
        awaited rather than one each: a timer per request (scheduled, then cancelled and left
        in the loop's heap) was about 3% of a request's CPU. Deadlines grow with time, so the
        timer set for the earliest rarely moves; it fires about once per run.timeout_s."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._expire_due, loop), at
        self._timer_loop = loop

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        later: float | None = None
        for waiter, deadline in self._deadlines.items():
            if waiter.get_loop() is not loop:
                continue  # awaited on another loop: that loop's timer watches it
            if deadline <= now:
                _expire(waiter)
            elif later is None or deadline < later:
                later = deadline
        if later is not None:
            self._watch(loop, later)

    def _idle_connection(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have been closed
            if not conn.closed and now - conn.idle_since < IDLE_REUSE_S:
                return conn
            conn.close()
        return None

    def _release(self, origin: Origin, conn: _Connection, now: float) -> None:
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
        else:
            conn.idle_since = now
            idle.append(conn)

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        request: httpx.Request,
    ) -> _Connection:
        scheme, host, port = origin
        tls = self._tls_context() if scheme == "https" else None
        timeout = self._connect_timeout
        limits = self._limits
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(limits),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {host}:{port} within {timeout:g} s", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: {exc}", request=request
            ) from exc
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = tls_context()
        return self._ssl

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def tls_context() -> ssl.SSLContext:
    """httpx's default verification: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set, else the
    certifi bundle (the same on every machine)."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        context = ssl.create_default_context()  # honours those variables
    else:
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def _injection(raw: list[tuple[bytes, bytes]]) -> str:
    """Names the header holding CR, LF or NUL (never its value: it may be a secret)."""
    for name, value in raw:
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")):
            shown = name.decode("ascii", "replace")[:64]
            return f"the request header {shown!r} contains CR, LF or NUL; refused"
    return "the request line contains CR, LF or NUL; refused"


class Unanswered(httpx.RemoteProtocolError):
    """The connection closed before any byte of the answer (httpx says the same)."""


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no complete answer in time"))
