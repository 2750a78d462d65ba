"""llmrun's previous hot path, kept for comparison: httpx requests over an aiohttp session.

The engine used this under asyncio until ``llmrun.wire.http1`` replaced it (benchmarks/README.md
has both); ``llmrun_transport.py --transport aiohttp`` measures it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from llmrun.wire.bounds import AnswerLimits, read_response


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
        return read_response(status, raw_headers, body, request, AnswerLimits())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
