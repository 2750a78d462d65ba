"""A small, fast HTTP/1.1 server protocol (keep-alive, Content-Length bodies) on asyncio.

It knows nothing of OpenAI: it parses requests and frames responses, and hands each request to
an ``App`` (``FakeOpenAI``), which answers through ``Connection.reply``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from http import HTTPStatus
from typing import Protocol, cast

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

Headers = list[tuple[str, str]]


class App(Protocol):
    """What a Connection needs from the server it belongs to."""

    conns: set[Connection]

    def dispatch(
        self,
        conn: Connection,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None: ...

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]: ...


class RequestError(Exception):
    """An unparseable request: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@functools.lru_cache(maxsize=64)
def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Connection(asyncio.Protocol):
    """One client connection: parses requests and writes the answers."""

    __slots__ = ("_app", "_buf", "_busy", "_continue_sent", "_loop", "_timer", "_transport")

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a request is being answered; buffer what comes meanwhile
        self._continue_sent = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._app.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._app.conns.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._buf += data
            if len(self._buf) > MAX_HEAD + MAX_BODY:
                self.abort()
            return
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
            self._buf = bytearray()
            self._process(buf)
        else:
            self._process(data)

    def _process(self, buf: bytes | bytearray) -> None:
        """Answer every complete request in ``buf``; keep the rest for later."""
        while buf:
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            if buf[:2] == b"\r\n":  # stray CRLF between requests is allowed
                buf = buf[2:]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(431, "Request header fields too large.")
                else:
                    self._keep(buf)
                return
            try:
                method, target, version, headers, length = parse_head(buf[:end])
            except RequestError as exc:
                self._fail(exc.status, exc.message)
                return
            total = end + 4 + length
            if len(buf) < total:
                if not self._continue_sent and "100-continue" in headers.get("expect", "").lower():
                    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self._continue_sent = True
                self._keep(buf)
                return
            body = bytes(buf[end + 4 : total])
            buf = buf[total:]
            self._continue_sent = False
            self._busy = True
            self._app.dispatch(self, method, target, version, headers, body)
            if self._busy:  # answer deferred: keep the rest until it is sent
                self._keep(buf)
                return

    def _keep(self, buf: bytes | bytearray) -> None:
        """Keep unprocessed bytes (``self._buf`` is empty while ``_process`` runs)."""
        self._buf = buf if isinstance(buf, bytearray) else bytearray(buf)

    def _fail(self, status: int, message: str) -> None:
        headers, body = self._app.error_body(status, message)
        self.reply(response_bytes(status, headers, body, close=True), close=True, delay=0.0)

    def reply(self, data: bytes | None, *, close: bool, delay: float) -> None:
        """Send ``data`` (None: nothing) after ``delay`` s; then close or go on."""
        if delay > 0:
            self._timer = self._loop.call_later(delay, self._deferred, data, close)
        else:
            self._send(data, close)

    def reply_in_parts(self, parts: list[bytes], *, close: bool, delay: float, gap: float) -> None:
        """Send ``parts`` one at a time, ``gap`` s apart, the first after ``delay``: an answer
        that trickles in (a streamed reply from a slow model)."""

        def step(i: int) -> None:
            self._timer = None
            if i == len(parts) - 1:
                self._deferred(parts[i], close)
                return
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            transport.write(parts[i])
            self._timer = self._loop.call_later(gap, step, i + 1)

        self._timer = self._loop.call_later(delay, step, 0)

    def _deferred(self, data: bytes | None, close: bool) -> None:
        self._timer = None
        self._send(data, close)
        if not self._busy and self._buf:
            buf = self._buf
            self._buf = bytearray()
            self._process(buf)

    def _send(self, data: bytes | None, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if close:
            self._buf = bytearray()
            transport.close()  # flushes what was written, then FIN
        else:
            self._busy = False


def parse_head(head: bytes | bytearray) -> tuple[str, str, str, dict[str, str], int]:
    """Parse a request head into (method, target, version, headers, content length)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise RequestError(400, "Malformed request line.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise RequestError(400, "Malformed header line.")
        name = name.lower()
        value = value.strip()
        if name in headers:
            headers[name] += ", " + value
        else:
            headers[name] = value
    if "transfer-encoding" in headers:
        raise RequestError(501, "Only Content-Length request bodies are supported.")
    length = 0
    raw_length = headers.get("content-length")
    if raw_length:
        if not raw_length.isdigit():
            raise RequestError(400, "Invalid Content-Length.")
        length = int(raw_length)
        if length > MAX_BODY:
            raise RequestError(413, "Request body too large.")
    return parts[0], parts[1], parts[2], headers, length


def response_bytes(status: int, headers: Headers, body: bytes, *, close: bool) -> bytes:
    """Serialize a response (``content-length`` is always set from ``body``)."""
    lines = [f"HTTP/1.1 {status} {reason(status)}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers)
    lines.append(f"content-length: {len(body)}\r\n")
    if close:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace") + body


def wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection")
    if connection is None:
        return version != "HTTP/1.0"
    tokens = connection.lower()
    if "close" in tokens:
        return False
    return version != "HTTP/1.0" or "keep-alive" in tokens


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop if it is importable, else asyncio's."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
