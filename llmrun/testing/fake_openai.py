"""A fast, fake OpenAI-compatible HTTP/1.1 server bound to 127.0.0.1.

Used by llmrun's tests, by plugin authors and by the benchmarks. It is a raw
``asyncio.Protocol`` server (keep-alive, ``Content-Length`` bodies, one request
in flight per connection) so that it is cheap enough to sit on one core while a
client hammers it from another.

In a test::

    with FakeOpenAI(latency_s=0.05) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x")
        ...
        assert srv.count() == 10

For benchmarks, in its own process::

    python -m llmrun.testing.fake_openai --port 0 --latency 0.2 --no-record \\
        --stats-file stats.json

prints ``http://127.0.0.1:PORT/v1`` on one line once listening, serves until
SIGTERM/SIGINT, writes ``{"requests": N}`` to the stats file and exits 0.

Endpoints: ``POST /v1/chat/completions`` (also ``"stream": true``: server-sent
events, in one piece, or one event every ``stream_gap_s`` seconds), ``GET /v1/models``
and ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/embeddings``, and Azure OpenAI's deployment paths
(``/openai/deployments/{name}/chat/completions?api-version=...``, ``api-key`` header).
Unknown paths get 404, malformed JSON 400, both with OpenAI-shaped error bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .. import jsonio
from .fake_chat import chat_answer
from .fake_routes import MORE_PATHS, RouteRequest, more_routes
from .http11 import (
    Connection,
    Headers,
    new_event_loop,
    response_bytes,
    wants_keep_alive,
)
from .openai_bodies import (
    default_error_body,
    dumps,
    error_json,
    mask_key,
)

__all__ = ["FakeOpenAI", "Fault", "RecordedRequest", "main"]

HOST = "127.0.0.1"
_MODEL_CREATED = 1_700_000_000


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str  # without the query string, e.g. "/v1/chat/completions"
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None (empty or malformed body)
    received_at: float  # time.monotonic()
    query: str = ""  # the raw query string, e.g. "api-version=2024-10-21"


@dataclass
class Fault:
    """How to misbehave for one request (returned by the ``fault`` callback).

    ``body=None`` means an OpenAI-shaped error JSON for ``status``; with a 2xx
    status and no body the normal answer is sent instead (with ``headers`` added),
    which together with ``delay_s``/``truncate_body`` simulates slow or cut-off
    successes. ``delay_s`` replaces the server's ``latency_s`` for this answer.
    """

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay_s: float = 0.0
    drop_connection: bool = False
    truncate_body: bool = False


# ------------------------------------------------------------------------- server


class FakeOpenAI:
    """A fake OpenAI-compatible server on 127.0.0.1, run in a daemon thread.

    ``api_keys=None`` accepts any Authorization; otherwise only ``Bearer <k>`` for
    ``k`` in the set (else 401 ``invalid_api_key``). ``reply(body) -> text`` replaces
    the default ``"echo: <last user message>"``. ``fault(request)`` is called per
    request (on the server thread); a returned :class:`Fault` overrides the answer.
    Every other answer (errors included) waits ``latency_s`` without blocking the
    loop, so concurrent requests overlap. ``requests`` is appended to from the
    server thread; ``count()`` works also with ``record=False``.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        model: str = "fake-model",
        api_keys: Collection[str] | None = None,
        reply: Callable[[Any], str] | None = None,
        fault: Callable[[RecordedRequest], Fault | None] | None = None,
        port: int = 0,
        record: bool = True,
        stream_gap_s: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.latency_s = latency_s
        # > 0: a streamed answer is sent event by event, this many seconds apart (else whole).
        self.stream_gap_s = stream_gap_s
        self.tls = tls  # serve HTTPS with this server context (the TLS benchmark)
        self.model = model
        self.api_keys_allowed = None if api_keys is None else frozenset(api_keys)
        self.reply = reply  # tests may replace it while the server runs
        self._fault = fault
        self._port = port
        self._record = record
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._total = 0
        self._seq = itertools.count(1)
        self._run_id = os.urandom(6).hex()
        self._url: str | None = None
        self.conns: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT/v1`` (only once started)."""
        if self._url is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._url

    def start(self) -> FakeOpenAI:
        """Serve from a daemon thread with its own event loop; return once listening."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        sock = self._bind()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(sock, ready, failure),
            name=f"FakeOpenAI:{sock.getsockname()[1]}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and wait for the thread to end."""
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # loop already closed
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAI:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        """The OpenAI-shaped error a connection sends for a request it cannot parse."""
        _, headers, body = error_json(status, message)
        return headers, body

    def count(self, path: str = "/v1/chat/completions") -> int:
        """How many requests for ``path`` were received (also with ``record=False``)."""
        return self._counts.get(path, 0)

    @property
    def total_requests(self) -> int:
        """How many requests were received, all paths together."""
        return self._total

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on what it accepts only then.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self._port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _thread_main(
        self, sock: socket.socket, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._serve(sock, ready.set, handle_signals=False))
        except BaseException as exc:
            if ready.is_set():
                traceback.print_exc(file=sys.stderr)
            else:
                failure.append(exc)
        finally:
            sock.close()
            loop.close()
            ready.set()

    def run_until_signal(self, on_ready: Callable[[], None]) -> None:
        """Serve in the calling thread until SIGTERM or SIGINT."""
        sock = self._bind()
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._serve(sock, on_ready, handle_signals=True))
        finally:
            sock.close()
            loop.close()

    async def _serve(
        self, sock: socket.socket, on_ready: Callable[[], None], *, handle_signals: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        self._loop, self._stop_event = loop, stop_event
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop_event.set)
        server = await loop.create_server(
            lambda: Connection(self, loop), sock=sock, backlog=4096, ssl=self.tls
        )
        scheme = "https" if self.tls else "http"
        self._url = f"{scheme}://{HOST}:{sock.getsockname()[1]}/v1"
        try:
            on_ready()
            await stop_event.wait()
        finally:
            server.close()
            for conn in list(self.conns):
                conn.abort()
            await asyncio.sleep(0)  # let connection_lost run
            await server.wait_closed()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    # -- request handling (server thread) --------------------------------------

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
        self._total += 1
        self._counts[path] = self._counts.get(path, 0) + 1
        body: Any = None
        bad_json = False
        if raw_body:
            try:
                body = jsonio.loads(raw_body)
            except (ValueError, RecursionError):
                bad_json = True
        keep_alive = wants_keep_alive(version, headers)
        request_id = f"req_{self._run_id}{next(self._seq):08x}"
        fault: Fault | None = None
        try:
            if self._record or self._fault is not None:
                record = RecordedRequest(method, path, headers, body, time.monotonic(), query)
                if self._record:
                    with self._lock:
                        self.requests.append(record)
                if self._fault is not None:
                    fault = self._fault(record)
            if fault is not None and (fault.body is not None or fault.status >= 300):
                status, out_headers, payload = fault.status, [], fault.body
                if payload is None:
                    payload = default_error_body(fault.status)
                    out_headers.append(("content-type", "application/json"))
            else:
                status, out_headers, payload = self._answer(
                    method, path, headers, body, bad_json, request_id, query
                )
        except Exception as exc:  # a callback raised: answer 500, tell the test author
            traceback.print_exc(file=sys.stderr)
            fault = None
            status, out_headers, payload = error_json(
                500, f"fake server callback raised {type(exc).__name__}: {exc}", "server_error"
            )
        out_headers.append(("x-request-id", request_id))
        streamed = any(k == "content-type" and "event-stream" in v for k, v in out_headers)
        if fault is None and streamed and self.stream_gap_s > 0:
            whole = response_bytes(status, out_headers, payload, close=not keep_alive)
            head = whole[: len(whole) - len(payload)]
            events = [e + b"\n\n" for e in payload.split(b"\n\n") if e]
            conn.reply_in_parts(
                [head + events[0], *events[1:]],
                close=not keep_alive,
                delay=self.latency_s,
                gap=self.stream_gap_s,
            )
            return
        if fault is None:
            conn.reply(
                response_bytes(status, out_headers, payload, close=not keep_alive),
                close=not keep_alive,
                delay=self.latency_s,
            )
            return
        if fault.drop_connection:
            conn.reply(None, close=True, delay=fault.delay_s)
            return
        merged = {k: v for k, v in out_headers}
        merged.update((k.lower(), v) for k, v in fault.headers.items())
        merged.pop("content-length", None)
        close = (
            not keep_alive or fault.truncate_body or "close" in merged.pop("connection", "").lower()
        )
        data = response_bytes(
            status, list(merged.items()), payload, close=close and not fault.truncate_body
        )
        if fault.truncate_body:
            data = data[: len(data) - len(payload) + len(payload) // 2]
        conn.reply(data, close=close, delay=fault.delay_s)

    def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        bad_json: bool,
        request_id: str,
        query: str = "",
    ) -> tuple[int, Headers, bytes]:
        """The normal (non-fault) answer: status, headers, body."""
        if path.startswith("/openai/deployments/") or path in MORE_PATHS:
            request = RouteRequest(method, path, query, headers, body, bad_json, request_id)
            return more_routes(self, request)
        if self.api_keys_allowed is not None:
            denied = self.check_key(headers.get("authorization"))
            if denied is not None:
                return denied
        if path == "/v1/chat/completions":
            if method != "POST":
                return _method_not_allowed(method, path)
            if bad_json:
                return _bad_json()
            return self.chat_answer(body, request_id)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                return _method_not_allowed(method, path)
            if path == "/v1/models":
                listing = {"object": "list", "data": [self._model_object()]}
                return 200, [("content-type", "application/json")], dumps(listing)
            wanted = path[len("/v1/models/") :]
            if wanted != self.model:
                return error_json(
                    404,
                    f"The model '{wanted}' does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            return 200, [("content-type", "application/json")], dumps(self._model_object())
        return error_json(404, f"Invalid URL ({method} {path})")

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.model,
            "object": "model",
            "created": _MODEL_CREATED,
            "owned_by": "system",
        }

    def check_key(self, authorization: str | None) -> tuple[int, Headers, bytes] | None:
        assert self.api_keys_allowed is not None
        if not authorization or not authorization.startswith("Bearer "):
            return error_json(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        key = authorization[len("Bearer ") :].strip()
        if key in self.api_keys_allowed:
            return None
        return error_json(
            401,
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    def chat_answer(self, body: Any, request_id: str) -> tuple[int, Headers, bytes]:
        """A ``/chat/completions`` answer (fake_chat.py): the reply callback's text, or an echo."""
        return chat_answer(body, request_id, self.model, self.reply)


def _method_not_allowed(method: str, path: str) -> tuple[int, Headers, bytes]:
    return error_json(405, f"Method not allowed ({method} {path}).")


def _bad_json() -> tuple[int, Headers, bytes]:
    return error_json(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
        "but what was sent was not valid JSON.)",
    )


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM/SIGINT (``python -m llmrun.testing.fake_openai``)."""
    parser = argparse.ArgumentParser(
        prog="python -m llmrun.testing.fake_openai",
        description="Fake OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--model", default="fake-model", help="model listed by /v1/models")
    parser.add_argument(
        "--no-record", action="store_true", help="keep no per-request list (still counts)"
    )
    parser.add_argument("--stats-file", help='on exit, write {"requests": N} here as JSON')
    parser.add_argument("--certfile", help="serve HTTPS: a PEM with the key and certificate chain")
    args = parser.parse_args(argv)

    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile)
    server = FakeOpenAI(
        latency_s=args.latency,
        model=args.model,
        port=args.port,
        record=not args.no_record,
        tls=tls,
    )

    def announce() -> None:
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()

    server.run_until_signal(announce)
    if args.stats_file:
        tmp = f"{args.stats_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"requests": server.total_requests}, f)
        os.replace(tmp, args.stats_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
