"""A lean HTTP/1.1 client for the engine's hot path under asyncio: keep-alive connections as
asyncio protocols, responses parsed by httptools (llhttp, Node's C parser).

Why our own: a provider call is one small JSON POST to one host, repeated millions of times.
aiohttp spends ~85 us of CPU per such request on machinery that job never uses (cookie jars,
redirects, tracing, multidict headers, yarl URLs), httpx's client ~500 us (benchmarks/README.md).
This client does only what the job needs: write the request the provider built (its
``httpx.Request`` already carries Host and Content-Length), read one response, keep the
connection for the next. Bodies may be length-delimited or chunked; a response delimited by
closing the connection is refused (no provider API sends one).

A connection that the server closed while idle is detected before reuse or, if the close
crosses the write, by the request failing with no byte of answer: that request is sent once more
on a new connection (the server never saw it, so nothing is paid twice).

Proxies are not supported here: ``transport.default_transport`` uses httpx when a proxy is set.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from typing import Any

import httptools
import httpx

from .transport import FIRST_BYTE, IDLE_TIMEOUT, read_response

Origin = tuple[str, str, int]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.received = 0  # bytes of the current answer (0: the server may not have seen it)
        self.closed = False
        self.keep_alive = True
        # A streamed answer (IDLE_TIMEOUT): when the last bytes and the first body bytes came.
        self.clock: Any = None
        self.last_data = 0.0
        self.first_body: float | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.clock is not None:
            self.last_data = self.clock()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            reason = f": {exc}" if exc else ""
            if self.received:
                error: Exception = httpx.RemoteProtocolError(
                    f"the server closed the connection mid-answer{reason}"
                )
            else:
                error = _Unanswered(f"the server closed the connection without answering{reason}")
            self.waiter.set_exception(error)

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self.clock is not None and self.first_body is None:
            self.first_body = self.clock()
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result((self.parser.get_status_code(), self.headers, body))

    # -- use ------------------------------------------------------------------------------

    def start(
        self, loop: asyncio.AbstractEventLoop, data: bytes, *, watch: bool = False
    ) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.headers, self.body, self.received = [], [], 0
        self.clock = loop.time if watch else None
        self.last_data, self.first_body = loop.time(), None
        self.waiter = loop.create_future()
        self.transport.write(data)
        return self.waiter

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Transport:
    """Sends ``httpx.Request``s over pooled HTTP/1.1 connections (asyncio only)."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float) -> None:
        self._max_idle = max_connections
        self._connect_timeout = connect_timeout_s
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._origins: dict[int, tuple[httpx.URL, Origin, bytes]] = {}

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
        head = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head) + content if content else b"".join(head)
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn, reused = self._idle_connection(origin), True
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
            except _Unanswered:
                if reused:
                    continue  # closed while idle: the server never saw this request
                raise
            except BaseException:  # a timeout, a cancelled call: the connection is mid-answer
                conn.close()
                raise
            first_body = conn.first_body
            if conn.keep_alive and not conn.closed:
                self._release(origin, conn)
            else:
                conn.close()
            response = read_response(status, headers, body, request)
            if idle and first_body is not None:
                response.extensions[FIRST_BYTE] = first_body - sent_at
            return response
        raise _Unanswered("the server closed two connections in a row without answering")

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        data: bytes,
        deadline: float,
        *,
        idle: float | None = None,
    ) -> Answer:
        waiter = conn.start(loop, data, watch=idle is not None)
        if idle is None:
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                return await waiter
            finally:
                timer.cancel()
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

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have been closed
            if not conn.closed:
                return conn
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
        else:
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
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
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
            if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
                self._ssl = ssl.create_default_context()  # honours those variables
            else:  # httpx's default: the certifi bundle, the same on every machine
                import certifi

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Unanswered(httpx.RemoteProtocolError):
    """The connection closed before any byte of the answer (httpx says the same)."""


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no complete answer in time"))
