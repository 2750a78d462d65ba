"""How the engine sends providers' ``httpx.Request``s on the hot path.

Providers build ``httpx.Request`` and read ``httpx.Response``: that is the contract. Three
transports keep it:

- ``http1.Http1Transport`` (asyncio, the default): llmrun's own HTTP/1.1 client, hardened
  against hostile servers (interim answers, stray bytes on idle connections, size caps,
  header injection, close-delimited bodies, POSTs never re-sent blindly: tests/
  test_wire_hostile.py) and checked against servers nobody here wrote (uvicorn/h11 and aiohttp,
  HTTP and HTTPS: tests/test_wire_conformance.py).
- ``HttpxTransport``: httpx's own transport without the client layer (trio, which the lean
  client's asyncio protocols cannot serve).
- ``ProxyTransport``: httpx's client with ``trust_env``, chosen whenever ``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``ALL_PROXY`` (any case) is set, so proxies, CONNECT tunnels and ``NO_PROXY``
  behave exactly as in httpx.

Why the default is our own client and not aiohttp or httpcore, by measurement (benchmarks/
README.md, "Choosing the client"): on realistic rows (prompts of 200-1,200 characters from a
template), provider and transport cost 58 us of CPU a request through the hardened ``http1``
against 173 us through an aiohttp session (104 against 231 us over TLS), while the raw aiohttp
loop the targets compare with spends 140 us (175 us over TLS). httpx's client costs ~2.7 ms a
request at C=64 and its pool collapses at C=512. With aiohttp underneath, llmrun could not even
match the hand-written loop. Every hostile case named above is a test, so the correctness of our
own client does not rest on trust.

Every transport caps what it reads (``bounds.AnswerLimits``) and returns a fully read
``bounds.ReadResponse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator
from typing import cast

import httpx

from ..components import Transport
from .bounds import AnswerLimits, read_response, too_large

PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


def proxy_configured(environ: dict[str, str] | None = None) -> bool:
    """True when the environment names a proxy, as httpx reads it (any case)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) or env.get(name.upper()) for name in PROXY_VARIABLES)


def default_transport(
    *,
    max_connections: int,
    connect_timeout_s: float,
    limits: AnswerLimits | None = None,
) -> Transport:
    """The transport for this run: httpx's client when a proxy is configured (it applies
    ``NO_PROXY`` host by host), else the lean HTTP/1.1 client under asyncio and httpx's
    transport elsewhere (trio)."""
    limits = limits or AnswerLimits()
    if proxy_configured():
        return ProxyTransport(
            max_connections=max_connections, connect_timeout_s=connect_timeout_s, limits=limits
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): the lean client is built on asyncio protocols
        return HttpxTransport(
            max_connections=max_connections, connect_timeout_s=connect_timeout_s, limits=limits
        )
    from .http1 import Http1Transport

    return Http1Transport(
        max_connections=max_connections, connect_timeout_s=connect_timeout_s, limits=limits
    )


class HttpxTransport:
    """httpx's own transport, called without the client layer (used under trio)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        limits: AnswerLimits | None = None,
    ) -> None:
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )
        self._connect_timeout = connect_timeout_s
        self._limits = limits or AnswerLimits()

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        request.extensions["timeout"] = httpx.Timeout(
            timeout_s, connect=self._connect_timeout
        ).as_dict()
        try:
            response = await self._transport.handle_async_request(request)
            try:
                body = await read_capped(response, self._limits)
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            exc.request = request  # as httpx's client does: the error names its request
            raise
        return read_response(
            response.status_code, response.headers.raw, body, request, self._limits
        )

    async def aclose(self) -> None:
        await self._transport.aclose()


class ProxyTransport:
    """httpx's client reading the proxy variables (``trust_env``), for runs behind a proxy."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        limits: AnswerLimits | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            trust_env=True,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._connect_timeout = connect_timeout_s
        self._limits = limits or AnswerLimits()

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        request.extensions["timeout"] = httpx.Timeout(
            timeout_s, connect=self._connect_timeout
        ).as_dict()
        response = await self._client.send(request, stream=True)
        # The client keeps cookies a server sets; a provider call needs none, and a hostile
        # server must not grow the jar call after call.
        self._client.cookies.clear()
        try:
            body = await read_capped(response, self._limits)
        finally:
            await response.aclose()
        return read_response(
            response.status_code, response.headers.raw, body, request, self._limits
        )

    async def aclose(self) -> None:
        await self._client.aclose()


async def read_capped(response: httpx.Response, limits: AnswerLimits) -> bytes:
    """The raw (still encoded) body of a streamed response, refused past the body cap."""
    limit = limits.max_response_bytes
    declared = response.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise too_large("declared body", limit, limits.setting)
    parts: list[bytes] = []
    total = 0
    # aclosing: a refused body leaves the stream at once, not when the collector finds it.
    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())  # an async generator
    async with contextlib.aclosing(raw) as stream:
        async for part in stream:
            total += len(part)
            if total > limit:
                raise too_large("body", limit, limits.setting)
            parts.append(part)
    return b"".join(parts)
