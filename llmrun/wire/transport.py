"""How the engine sends providers' ``httpx.Request``s on the hot path.

Providers build ``httpx.Request`` and read ``httpx.Response``: that is the contract. Sending them
through ``httpx.AsyncClient`` costs several times the CPU of a raw aiohttp loop per request,
and its connection pool degrades with hundreds of connections in flight; aiohttp itself spends
most of its time on machinery a provider call never uses (figures in benchmarks/README.md). So under
asyncio the engine sends through llmrun's own lean HTTP/1.1 client (``llmrun.wire.http1``), and
under trio it calls httpx's own transport directly, skipping the client layer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ..components import Transport

# A request extension: bound the wait for each next byte of the answer, not the whole answer (a
# streamed answer that keeps coming is alive); set by a provider for a streamed call.
IDLE_TIMEOUT = "llmrun.idle_timeout"
# A response extension: seconds from sending to the first body bytes, when IDLE_TIMEOUT was set.
FIRST_BYTE = "llmrun.first_byte_s"


def default_transport(*, max_connections: int, connect_timeout_s: float) -> Transport:
    """The fastest transport for the running event loop: llmrun's own HTTP/1.1 client
    (``llmrun.wire.http1``) under asyncio, httpx's transport elsewhere (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): the lean client is built on asyncio protocols
        return HttpxTransport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)
    from .http1 import Http1Transport

    return Http1Transport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)


class HttpxTransport:
    """httpx's own transport, called without the client layer (used under trio)."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float) -> None:
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )
        self._connect_timeout = connect_timeout_s

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        request.extensions["timeout"] = httpx.Timeout(
            timeout_s, connect=self._connect_timeout
        ).as_dict()
        try:
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            exc.request = request  # as httpx's client does: the error names its request
            raise
        response.request = request
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


def read_response(
    status: int, raw_headers: Any, body: bytes, request: httpx.Request
) -> httpx.Response:
    """An ``httpx.Response`` with its body read, as httpx's client returns it after
    ``aread()``: built like a transport's response (``stream=``), then read. An identity body
    is the content as it stands, so it is set the way ``Response.read`` sets it (``_content``)
    without running the decoder chain; ~10 us less per request (benchmarks/README.md)."""
    response = httpx.Response(
        status, headers=raw_headers, stream=httpx.ByteStream(body), request=request
    )
    encoding = response.headers.get("content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        response.read()  # decodes gzip, deflate, br, zstd as httpx does
        return response
    response._content = body
    response.is_stream_consumed = True
    response.is_closed = True
    response._num_bytes_downloaded = len(body)
    return response
