"""The ASGI application of ``llmrun serve`` and how it is run (uvicorn, one process).

Who gets in: with a token, every route but ``/health`` needs ``Authorization: Bearer <token>``.
Without one the server listens on loopback only, and also refuses requests whose ``Host`` is
not a loopback name: a web page the user visits cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LockedError, RecipeError
from ..job.store import RunState
from ..plugins import Registry
from ..recipe.model import Recipe
from .gateway import error_body
from .jobs import Jobs
from .routes import Routes
from .service import Service
from .sessions import Sessions

log = logging.getLogger("llmrun.serve")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
STOP_GRACE_S = 2.0  # beyond run.drain_s, for a stopping job to write its manifest


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_body: int = 8 << 20
    queue: int = 1024  # calls that may wait for a slot beyond run.concurrency
    history: int = 40  # messages a session keeps (besides its system message)


def serve_folder(recipe: Recipe) -> Path:
    """Where jobs and sessions live: beside the recipe's output."""
    return RunState(recipe.output_path).dir / "serve"


def build_app(recipe: Recipe, registry: Registry, settings: Settings) -> Starlette:
    service = Service(recipe, registry, queue=settings.queue)
    folder = serve_folder(recipe)
    jobs = Jobs(folder / "jobs", service)
    sessions = Sessions(folder / "sessions", settings.history)
    routes = Routes(service, jobs, sessions, auth=settings.token is not None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.opened(), anyio.create_task_group() as tg:
            tg.start_soon(jobs.run)
            yield
            jobs.stop()
            with anyio.move_on_after(recipe.run.drain_s + STOP_GRACE_S):
                await jobs.finished.wait()
            tg.cancel_scope.cancel()

    app = Starlette(routes=routes.routes(), lifespan=lifespan)
    app.add_middleware(Guard, token=settings.token, max_body=settings.max_body)
    return app


class Guard:
    """Authentication, the loopback rule, and the body size limit, before any route."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _answer(send, 413, f"body: larger than {self.max_body} bytes", {})
            return
        # The body is read here, bounded, and handed on whole (a route never sees more).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _answer(send, 413, f"body: larger than {self.max_body} bytes", {})
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refusal(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[int, str, dict[str, str]] | None:
        if self.token is None:
            client = scope.get("client")
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            name = name.strip("[]").lower()
            if client is not None and client[0] not in LOOPBACK_HOSTS:
                return 403, "this server takes requests from this machine only", {}
            if name not in LOOPBACK_HOSTS:
                return 403, f"Host {host!r} refused: without a token only loopback names", {}
            return None
        if scope["path"] == "/health":
            return None
        given = headers.get("authorization", "")
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return (
                401,
                "a valid `Authorization: Bearer <token>` header is needed",
                {"www-authenticate": "Bearer"},
            )
        return None


async def _answer(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    kind = {401: "unauthorized", 403: "forbidden", 413: "too_large"}.get(status, "error")
    body = json.dumps(error_body(message, kind)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def run_server(recipe: Recipe, registry: Registry, settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handling: a graceful stop)."""
    import uvicorn

    app = build_app(recipe, registry, settings)
    with _one_server(recipe):
        sock = listening_socket(settings.host, settings.port)
        port = sock.getsockname()[1]
        host = f"[{settings.host}]" if sock.family == socket.AF_INET6 else settings.host
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=int(recipe.run.drain_s + STOP_GRACE_S) + 1,
        )
        logging.basicConfig(level=logging.INFO, format="llmrun serve: %(message)s")
        # Printed once bound (port 0 picks a free one): scripts and tests read the address.
        print(f"llmrun serve: {recipe.name} on http://{host}:{port}", file=sys.stderr, flush=True)  # noqa: T201
        uvicorn.Server(config).run(sockets=[sock])


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening.

    Made with ``IPPROTO_TCP`` named: asyncio sets ``TCP_NODELAY`` only on connections accepted
    from a socket whose ``proto`` says TCP, and ``socket.socket(family, SOCK_STREAM)`` says 0.
    Without it, each answer's body (written after its headers) waited for the client's delayed
    ACK: every request after the first on a kept-alive connection took 40 ms more."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RecipeError(
            f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    sock.listen(2048)
    return sock


@contextmanager
def _one_server(recipe: Recipe) -> Iterator[None]:
    """Hold the serve folder's lock: two servers would both resume the same jobs."""
    folder = serve_folder(recipe)
    try:
        with RunState(folder / "server").locked():
            yield
    except LockedError:
        raise LockedError(
            f"another llmrun serve is serving {recipe.path} (its jobs and sessions: {folder})"
        ) from None
