"""How the engine sends providers' ``httpx.Request``s on the hot path.

Providers build ``httpx.Request`` and read ``httpx.Response``: that is the contract. Sending them
through ``httpx.AsyncClient`` costs ~3x the CPU of aiohttp per request and its connection pool
degrades with hundreds of connections in flight (figures in benchmarks/README.md), so under
asyncio the engine sends through one ``aiohttp`` session and wraps the answer back into an
``httpx.Response``. Under trio (where aiohttp cannot run) it calls httpx's own transport
directly, skipping the client layer.

The wrapping is the only cost this route adds to raw aiohttp, so it is kept to what an httpx
transport itself does: the response is built from the stream constructor (no content headers
invented, no decoder chain for a body that is already in memory) and, unless it is
content-encoded, its body is handed over as read. A content-encoded body is decoded by
``httpx.Response.read`` exactly as httpx's own client would (aiohttp's decompression is off).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .components import Transport


def default_transport(*, max_connections: int, connect_timeout_s: float) -> Transport:
    """The fastest transport for the running event loop: llmrun's own HTTP/1.1 client
    (``llmrun.http1``) under asyncio, httpx's transport elsewhere (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): the lean client is built on asyncio protocols
        return HttpxTransport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)
    from .http1 import Http1Transport

    return Http1Transport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)


class AiohttpTransport:
    """httpx requests sent over an aiohttp session (keep-alive pool, C HTTP parser)."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._session: Any = None
        self._aiohttp: Any = None  # the module, imported on first use (not needed under trio)
        self._timeouts: dict[float, Any] = {}
        self._urls: dict[int, tuple[httpx.URL, Any]] = {}

    def _open(self) -> Any:
        import aiohttp

        self._aiohttp = aiohttp
        connector = aiohttp.TCPConnector(
            limit=self._max, limit_per_host=0, enable_cleanup_closed=False, ttl_dns_cache=300
        )
        # auto_decompress off: httpx.Response decodes per Content-Encoding itself.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        return self._session

    def _url(self, url: httpx.URL) -> Any:
        """The yarl URL for an httpx URL (providers send to a handful of URL objects)."""
        cached = self._urls.get(id(url))
        if cached is not None and cached[0] is url:
            return cached[1]
        import yarl

        converted = yarl.URL(str(url), encoded=True)
        if len(self._urls) >= 64:
            self._urls.clear()
        self._urls[id(url)] = (url, converted)
        return converted

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        session = self._session or self._open()
        aiohttp = self._aiohttp
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            # Connect and read apart: a slow connect is not a slow answer (run.timeout_s is the
            # longest wait for bytes once connected, run.connect_timeout_s for the connection).
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=timeout_s
            )
            self._timeouts[timeout_s] = timeout
        try:
            content = request.content
        except httpx.RequestNotRead:  # built with stream=...: read it (once) like httpx does
            content = await request.aread()
        try:
            async with session.request(
                request.method,
                self._url(request.url),
                headers=request.headers.multi_items(),
                data=content,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status, raw_headers = resp.status, resp.raw_headers
                encoded = resp.headers.get("Content-Encoding")
        except asyncio.TimeoutError as exc:
            if type(exc).__name__ == "ConnectionTimeoutError":  # aiohttp's sock_connect
                raise httpx.ConnectTimeout(
                    f"no connection within {self._connect_timeout:g} s (run.connect_timeout_s)",
                    request=request,
                ) from exc
            raise httpx.ReadTimeout(
                f"no answer within {timeout_s:g} s (run.timeout_s)", request=request
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        ) as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.NetworkError(str(exc) or type(exc).__name__, request=request) from exc
        return _read_response(status, raw_headers, body, request, encoded)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


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


def _read_response(
    status: int,
    raw_headers: Any,
    body: bytes,
    request: httpx.Request,
    content_encoding: str | None,
) -> httpx.Response:
    """An ``httpx.Response`` with its body read, as httpx's client returns it after
    ``aread()``: built like a transport's response (``stream=``), then read. An identity body
    is the content as it stands, so it is set the way ``Response.read`` sets it (``_content``)
    without running the decoder chain; ~10 us less per request (benchmarks/README.md)."""
    response = httpx.Response(
        status, headers=raw_headers, stream=httpx.ByteStream(body), request=request
    )
    if content_encoding and content_encoding.strip().lower() != "identity":
        response.read()  # decodes gzip, deflate, br, zstd as httpx does
        return response
    response._content = body
    response.is_stream_consumed = True
    response.is_closed = True
    response._num_bytes_downloaded = len(body)
    return response
