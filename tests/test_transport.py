"""The engine's transports return what httpx's own client would, and fail the same way.

Every transport is checked against a real local server (FakeOpenAI on 127.0.0.1): the
``httpx.Response`` it returns (status, headers as sent, body read, decoded, flags) and the
``httpx.TransportError`` subclass it raises for each kind of network failure.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.wire.bounds import AnswerLimits, AnswerTooLarge
from llmrun.wire.http1 import Http1Transport
from llmrun.wire.transport import HttpxTransport, ProxyTransport

from .hostile_server import Exchange, HostileServer, gzip_bomb

TRANSPORTS = [
    pytest.param(Http1Transport, "asyncio", id="http1"),
    pytest.param(HttpxTransport, "asyncio", id="httpx-asyncio"),
    pytest.param(HttpxTransport, "trio", id="httpx-trio"),
    # What the engine uses when a proxy variable is set (no proxy here: it goes direct).
    pytest.param(ProxyTransport, "asyncio", id="proxy-client-asyncio"),
]


def chat_request(base_url: str, content: str = "hello") -> httpx.Request:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return httpx.Request(
        "POST",
        base_url + "/chat/completions",
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        content=json.dumps(body).encode(),
    )


def send_with(
    cls: type[Any],
    backend: str,
    fn: Callable[[Any], Awaitable[Any]],
) -> Any:
    async def main() -> Any:
        transport = cls(max_connections=4, connect_timeout_s=5)
        try:
            return await fn(transport)
        finally:
            await transport.aclose()

    return anyio.run(main, backend=backend)


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_response_is_what_the_httpx_client_returns(cls: type[Any], backend: str) -> None:
    with FakeOpenAI() as server:
        request = chat_request(server.url)
        response = send_with(cls, backend, lambda t: t.send(request, 10))
        with httpx.Client() as client:
            expected = client.send(chat_request(server.url))
    assert isinstance(response, httpx.Response)
    assert response.status_code == expected.status_code == 200
    assert response.request is request
    names = [k for k, _ in response.headers.multi_items()]
    assert names == [k for k, _ in expected.headers.multi_items()]  # as sent, none added
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-request-id"].startswith("req_")
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert response.json().keys() == expected.json().keys()
    assert response.text == response.content.decode()
    assert response.read() == response.content  # already read: read() is a no-op
    assert response.is_closed and response.is_stream_consumed
    assert response.num_bytes_downloaded in (0, len(response.content))


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_a_content_encoded_body_is_decoded(cls: type[Any], backend: str) -> None:
    payload = json.dumps({"choices": [{"message": {"content": "zipped"}}]}).encode()

    def fault(request: RecordedRequest) -> Fault:
        return Fault(
            status=200,
            body=gzip.compress(payload),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )

    with FakeOpenAI(fault=fault) as server:
        response = send_with(cls, backend, lambda t: t.send(chat_request(server.url), 10))
    assert response.content == payload
    assert response.headers["content-encoding"] == "gzip"  # kept, as httpx keeps it
    assert response.json()["choices"][0]["message"]["content"] == "zipped"


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_a_streamed_request_body_is_sent(cls: type[Any], backend: str) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "streamed"}]})
    with FakeOpenAI() as server:
        url = httpx.URL(server.url + "/chat/completions")
        request = httpx.Request(
            "POST",
            url,
            headers={
                "host": url.netloc.decode(),
                "content-type": "application/json",
                "content-length": str(len(body)),
            },
            stream=httpx.ByteStream(body.encode()),
        )
        response = send_with(cls, backend, lambda t: t.send(request, 10))
        assert server.requests[-1].body["messages"][0]["content"] == "streamed"
    assert response.status_code == 200


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_requests_go_to_their_own_url(cls: type[Any], backend: str) -> None:
    with FakeOpenAI(model="the-model") as server:

        async def run(transport: Any) -> list[int]:
            statuses = []
            for i in range(6):
                if i % 2:
                    request = httpx.Request("GET", server.url + "/models/the-model")
                else:
                    request = chat_request(server.url, f"n{i}")
                statuses.append((await transport.send(request, 10)).status_code)
            return statuses

        assert send_with(cls, backend, run) == [200] * 6
        paths = [r.path for r in server.requests]
    assert paths == ["/v1/chat/completions", "/v1/models/the-model"] * 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "timeout_s", "error"),
    [
        (Fault(status=200, delay_s=2.0), 0.3, httpx.TimeoutException),
        (Fault(drop_connection=True), 10, httpx.RemoteProtocolError),
        (Fault(status=200, truncate_body=True), 10, httpx.RemoteProtocolError),
    ],
    ids=["timeout", "dropped", "truncated"],
)
def test_failures_are_httpx_transport_errors(
    cls: type[Any], backend: str, fault: Fault, timeout_s: float, error: type[Exception]
) -> None:
    with FakeOpenAI(fault=lambda r: fault) as server:
        request = chat_request(server.url)
        with pytest.raises(error) as raised:
            send_with(cls, backend, lambda t: t.send(request, timeout_s))
    assert raised.value.request is request


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_nothing_listening_is_a_connect_error(cls: type[Any], backend: str) -> None:
    request = chat_request(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(httpx.ConnectError):
        send_with(cls, backend, lambda t: t.send(request, 5))


def send_limited(cls: type[Any], backend: str, url: str, limit: int) -> Any:
    async def main() -> Any:
        limits = AnswerLimits(max_response_bytes=limit)
        transport = cls(max_connections=2, connect_timeout_s=5, limits=limits)
        try:
            return await transport.send(chat_request(url), 10)
        finally:
            await transport.aclose()

    return anyio.run(main, backend=backend)


# Under trio, httpx's inner async generators, left mid-body when the cap is passed, are reported
# when collected (the transport closes the response, which closes the connection; httpx gives no
# way to close those generators from outside).
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_every_transport_caps_the_body_it_reads(cls: type[Any], backend: str) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def endless(ex: Exchange) -> bool:
        ex.send(head)
        for _ in range(1024):  # 64 MiB at most: a client that reads it all has failed anyway
            ex.send(b"10000\r\n" + bytes(65536) + b"\r\n")
        return False

    too_large = pytest.raises(AnswerTooLarge, match=r"body from the server: over 1 MiB")
    with HostileServer(endless) as server, too_large:
        send_limited(cls, backend, server.url, 1024 * 1024)
    assert server.bytes_sent < 16 * 1024 * 1024  # the cap, plus what socket buffers held


@pytest.mark.parametrize(("cls", "backend"), TRANSPORTS)
def test_every_transport_caps_the_decoded_body(cls: type[Any], backend: str) -> None:
    bomb = gzip_bomb(64 * 1024 * 1024)

    def send_bomb(ex: Exchange) -> bool:
        ex.send(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
            + bomb
        )
        return True

    too_large = pytest.raises(AnswerTooLarge, match=r"decoded body from the server: over 1 MiB")
    with HostileServer(send_bomb) as server, too_large:
        send_limited(cls, backend, server.url, 1024 * 1024)
