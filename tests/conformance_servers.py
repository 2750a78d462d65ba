"""A tiny OpenAI-compatible chat endpoint served by HTTP servers nobody here wrote: uvicorn (its
h11 protocol), hypercorn and aiohttp's web server, over HTTP or HTTPS, each on its own thread and
loop.

The answer names the record (``answer for <id>``) so a test can check that every row holds its
own reply. The framing varies with the record number so that each server's ways of sending a
body are met: Content-Length, chunked (several body pieces), and (aiohttp) gzip.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web


def reply_for(body: bytes) -> tuple[int, bytes]:
    """(record number, the chat completion JSON) for a request body."""
    request = json.loads(body)
    text = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    found = re.search(r"id=(r(\d+))", text)
    record_id, number = (found.group(1), int(found.group(2))) if found else ("?", 0)
    answer = {
        "id": f"chatcmpl-{record_id}",
        "object": "chat.completion",
        "model": request.get("model", "m"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer for {record_id}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    return number, json.dumps(answer).encode()


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    number, body = reply_for(b"".join(chunks))
    headers = [(b"content-type", b"application/json")]
    if number % 2:  # no Content-Length, several pieces: uvicorn sends it chunked
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        middle = len(body) // 2
        await send({"type": "http.response.body", "body": body[:middle], "more_body": True})
        await send({"type": "http.response.body", "body": body[middle:]})
        return
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
    number, body = reply_for(await request.read())
    if number % 3 == 1:  # chunked, in two writes
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body[:10])
        await response.write(body[10:])
        await response.write_eof()
        return response
    answer = web.Response(body=body, content_type="application/json")
    if number % 3 == 2:
        answer.enable_compression(force=web.ContentCoding.gzip)
    return answer


class ServerThread:
    """Runs ``serve(ready)`` on a loop of its own; ``port`` once started."""

    def __init__(self, kind: str, tls_pem: Path | None) -> None:
        """``tls_pem``: the server's key and certificate chain in one PEM file (HTTPS)."""
        self.kind, self.tls = kind, tls_pem
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{self.kind} did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        if self.kind == "uvicorn":
            await self._uvicorn()
        elif self.kind == "hypercorn":
            await self._hypercorn()
        else:
            await self._aiohttp()

    async def _uvicorn(self) -> None:
        import uvicorn

        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        tls = {"ssl_certfile": str(self.tls), "ssl_keyfile": str(self.tls)} if self.tls else {}
        config = uvicorn.Config(asgi_app, http="h11", lifespan="off", log_level="warning", **tls)
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
        self._ready.set()
        assert self._stop is not None
        await self._stop.wait()
        server.should_exit = True
        await task
        sock.close()

    async def _hypercorn(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = Config()
        # The socket bound here (its port is known), handed over: hypercorn closes it.
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = config.errorlog = None
        if self.tls is not None:
            config.certfile = config.keyfile = str(self.tls)
        assert self._stop is not None
        task = asyncio.ensure_future(
            serve(asgi_app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )
        self._ready.set()
        await task

    async def _aiohttp(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", aiohttp_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls)
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock, ssl_context=context)
        await site.start()
        self._ready.set()
        assert self._stop is not None
        await self._stop.wait()
        await runner.cleanup()
