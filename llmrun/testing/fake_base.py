"""What every fake provider server shares: a daemon thread serving HTTP/1.1 on 127.0.0.1,
requests recorded as received, faults injected per request.

A subclass speaks one provider's wire format: it implements ``_answer`` (the normal answer to a
request) and ``error_body`` (that provider's error JSON for a status), and names the header that
carries its request id. ``fake_anthropic`` and ``fake_gemini`` are built on it; ``fake_batches``
on ``ThreadedServer``, the thread and event loop alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from .http11 import Connection, Headers, new_event_loop, response_bytes, wants_keep_alive

HOST = "127.0.0.1"

Answer = tuple[int, Headers, bytes]
_S = TypeVar("_S", bound="ThreadedServer")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_answer(status: int, obj: Any, *extra: tuple[str, str]) -> Answer:
    return status, [("content-type", "application/json"), *extra], dumps(obj)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake server received it."""

    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None (empty or malformed body)
    received_at: float  # time.monotonic()


@dataclass
class Fault:
    """How to misbehave for one request (returned by the ``fault`` callback).

    ``body=None`` means the provider's own error JSON for ``status``; with a 2xx status and no
    body the normal answer is sent (with ``headers`` added). ``delay_s`` delays the answer;
    ``drop_connection`` closes the connection without answering.
    """

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay_s: float = 0.0
    drop_connection: bool = False


class ThreadedServer:
    """An HTTP/1.1 server on 127.0.0.1 in a daemon thread with its own event loop; use as a
    context manager. A subclass answers in ``dispatch`` (on the server thread) and gives its
    API's error JSON in ``error_body`` (``llmrun.testing.http11.App``)."""

    base_path = ""  # appended to http://127.0.0.1:PORT in ``url``

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self._url: str | None = None
        self.conns: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def dispatch(
        self,
        conn: Connection,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to put in a recipe's ``provider.base_url`` (once started)."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url + self.base_path

    def start(self: _S) -> _S:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on what it accepts only then.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(sock, ready), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # loop already closed
                pass
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._serve(sock, ready))
        finally:
            sock.close()
            loop.close()
            ready.set()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stop_event = loop, asyncio.Event()
        server = await loop.create_server(lambda: Connection(self, loop), sock=sock)
        self._url = f"http://{HOST}:{sock.getsockname()[1]}"
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for conn in list(self.conns):
                conn.abort()
            await asyncio.sleep(0)
            await server.wait_closed()


class FakeServer(ThreadedServer):
    """A fake provider server (see ``ThreadedServer``) recording what it receives.

    ``api_keys=None`` accepts any key; otherwise the subclass rejects others the way its API
    does. ``reply(body) -> text`` replaces the default echo of the last user text.
    ``fault(request)`` may return a :class:`Fault` for any request (called on the server
    thread). ``requests`` lists what was received, in order.
    """

    request_id_header = "x-request-id"

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        api_keys: Collection[str] | None = None,
        reply: Callable[[Any], str] | None = None,
        fault: Callable[[RecordedRequest], Fault | None] | None = None,
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.reply = reply
        self.fault = fault
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._run_id = os.urandom(6).hex()
        super().__init__(port=port)

    # -- what a subclass provides ------------------------------------------------

    def _answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any, rid: str
    ) -> Answer:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        raise NotImplementedError

    def count(self, path: str | None = None) -> int:
        """How many requests were received (for ``path`` only, if given)."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    # -- request handling (server thread) ------------------------------------------

    def dispatch(
        self,
        conn: Connection,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        raw_body: bytes,
    ) -> None:
        path, _, query = target.partition("?")
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except (ValueError, RecursionError):
                body = None
        keep_alive = wants_keep_alive(version, headers)
        rid = f"req_{self._run_id}{next(self._seq):08x}"
        record = RecordedRequest(method, path, query, headers, body, time.monotonic())
        with self._lock:
            self.requests.append(record)
        fault: Fault | None = None
        try:
            fault = self.fault(record) if self.fault is not None else None
            if fault is not None and fault.drop_connection:
                conn.reply(None, close=True, delay=fault.delay_s)
                return
            if fault is not None and (fault.body is not None or fault.status >= 300):
                status = fault.status
                if fault.body is None:
                    out_headers, payload = self.error_body(status, "")
                else:
                    out_headers, payload = [("content-type", "application/json")], fault.body
            elif raw_body and body is None:
                status = 400
                out_headers, payload = self.error_body(400, "The request body is not valid JSON.")
            else:
                status, out_headers, payload = self._answer(method, path, query, headers, body, rid)
        except Exception as exc:  # a callback or the fake itself failed: say so loudly
            traceback.print_exc(file=sys.stderr)
            status = 500
            out_headers, payload = self.error_body(500, f"fake server raised {exc!r}")
        out_headers = list(out_headers)
        out_headers.append((self.request_id_header, rid))
        if fault is not None:
            out_headers.extend((k.lower(), v) for k, v in fault.headers.items())
        delay = fault.delay_s if fault is not None else self.latency_s
        conn.reply(
            response_bytes(status, out_headers, payload, close=not keep_alive),
            close=not keep_alive,
            delay=delay,
        )


def serve(cls: type[FakeServer], argv: Sequence[str] | None = None) -> int:
    """Run a fake server until SIGTERM/SIGINT, printing its base URL on one line once it
    listens (``python -m llmrun.testing.fake_anthropic --port 0``)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {cls.__module__}", description=(cls.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with cls(latency_s=args.latency, port=args.port) as server:
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()
        stop.wait()
    return 0


def problems_of(value: Any, shape: Any, where: str) -> list[str]:
    """Type problems of ``value`` against a small shape language (used to check request bodies
    against the documented request shape): a type or tuple of types; ``[shape]`` for a list of
    items; ``{key: shape}`` for an object where keys ending in ``?`` are optional and no other key
    is allowed (``{"*": shape}`` allows any key)."""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {_kind(value)}"]
        out: list[str] = []
        for i, item in enumerate(value):
            out.extend(problems_of(item, shape[0], f"{where}.{i}"))
        return out
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {_kind(value)}"]
        out = []
        known = {k.rstrip("?"): (k.endswith("?"), s) for k, s in shape.items()}
        for key, (optional, _) in known.items():
            if key != "*" and not optional and key not in value:
                out.append(f"{where}.{key}: Field required")
        for key, item in value.items():
            if key in known:
                out.extend(problems_of(item, known[key][1], f"{where}.{key}"))
            elif "*" in known:
                out.extend(problems_of(item, known["*"][1], f"{where}.{key}"))
            else:
                out.append(f"{where}.{key}: Extra inputs are not permitted")
        return out
    if callable(shape) and not isinstance(shape, type):
        message = shape(value)
        return [f"{where}: {message}"] if message else []
    types = shape if isinstance(shape, tuple) else (shape,)
    if bool in (type(value),) and bool not in types:
        return [f"{where}: expected {_names(types)}, got a boolean"]
    if not isinstance(value, types):
        return [f"{where}: expected {_names(types)}, got {_kind(value)}"]
    return []


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)
