"""How the engine sends providers' ``httpx.Request``s on the hot path.

Providers build ``httpx.Request`` and read ``httpx.Response``: that is the contract. Sending them
through ``httpx.AsyncClient`` costs ~3x the CPU of aiohttp per request and its connection pool
degrades with hundreds of connections in flight (figures in benchmarks/README.md), so under
asyncio the engine sends through one ``aiohttp`` session and wraps the answer back into an
``httpx.Response``. Under trio (where aiohttp cannot run) it calls httpx's own transport
directly, skipping the client layer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .components import Transport


def default_transport(*, max_connections: int, connect_timeout_s: float) -> Transport:
    """The fastest transport for the running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): aiohttp is asyncio-only
        return HttpxTransport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)
    return AiohttpTransport(max_connections=max_connections, connect_timeout_s=connect_timeout_s)


class AiohttpTransport:
    """httpx requests sent over an aiohttp session (keep-alive pool, C HTTP parser)."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._session: Any = None
        self._timeouts: dict[float, Any] = {}

    def _open(self) -> Any:
        import aiohttp

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

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        import aiohttp
        import yarl

        session = self._session or self._open()
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout)
            self._timeouts[timeout_s] = timeout
        try:
            async with session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=request.content,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return httpx.Response(
                    resp.status, headers=resp.raw_headers, content=body, request=request
                )
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout(
                f"no complete answer within {timeout_s:g} s", request=request
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
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
