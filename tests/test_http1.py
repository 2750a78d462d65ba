"""The lean HTTP/1.1 transport's own behaviour: keep-alive reuse, and what happens when a server
closes a pooled connection (an idempotent request goes again; a POST the server may have seen
does not)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from llmrun.wire.http1 import Http1Transport

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"


class ScriptedServer:
    """A server on 127.0.0.1 answering the n-th request on each connection as a script says:
    ``script[(connection_no, request_no)]`` is the bytes to send, or None to close unanswered."""

    def __init__(self, script: dict[tuple[int, int], bytes | None], default: bytes = ANSWER):
        self.script, self.default = script, default
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[int, int]] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            number = self.connections
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, number), daemon=True).start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        buffer, request_no = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                self.seen.append((number, request_no))
                answer = self.script.get((number, request_no), self.default)
                if answer is None:
                    return
                conn.sendall(answer)
                request_no += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    class Made(ScriptedServer):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            made.append(self)

    yield Made
    for server in made:
        server.close()


def send_all(
    port: int, count: int, method: str = "POST", pause_s: float = 0
) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = Http1Transport(max_connections=4, connect_timeout_s=5)
        try:
            out = []
            for i in range(count):
                content = b"%d" % i if method == "POST" else None
                request = httpx.Request(method, f"http://127.0.0.1:{port}/x", content=content)
                out.append(await transport.send(request, 5))
                await anyio.sleep(pause_s)
            return out
        finally:
            await transport.aclose()

    return anyio.run(main)


def test_one_connection_serves_request_after_request(server_factory) -> None:
    server = server_factory({})
    responses = send_all(server.port, 5)
    assert [r.text for r in responses] == ["ok"] * 5
    assert server.connections == 1
    assert server.seen == [(0, i) for i in range(5)]


def test_a_post_on_a_reused_connection_closed_unanswered_is_not_re_sent(server_factory) -> None:
    # The server read the 2nd POST, then closed: it may have acted on it (and billed it), so
    # the transport must not send it again by itself (RFC 9112 9.3.1); the engine's retry
    # policy decides, counting the attempt.
    server = server_factory({(0, 1): None})
    with pytest.raises(httpx.RemoteProtocolError, match="may have seen the POST"):
        send_all(server.port, 3)
    assert server.seen == [(0, 0), (0, 1)]


def test_an_idempotent_request_on_a_reused_connection_closed_unanswered_goes_again(
    server_factory,
) -> None:
    server = server_factory({(0, 1): None})
    responses = send_all(server.port, 3, method="GET")
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert server.seen == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_connection_the_server_closes_after_answering_is_not_reused(server_factory) -> None:
    # "Connection: close", then the close: each POST goes out once, on a new connection.
    closing = ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    server = server_factory({}, default=closing)
    responses = send_all(server.port, 3, pause_s=0.05)
    assert [r.text for r in responses] == ["ok"] * 3
    assert server.seen == [(0, 0), (1, 0), (2, 0)]


def test_a_fresh_connection_closed_unanswered_is_an_error_not_a_loop(server_factory) -> None:
    server = server_factory({(0, 0): None, (1, 0): None})
    with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
        send_all(server.port, 1)
    assert server.seen == [(0, 0)]  # a new connection is not retried: the server saw it


def test_chunked_bodies_are_joined(server_factory) -> None:
    server = server_factory({}, default=CHUNKED)
    [response] = send_all(server.port, 1)
    assert response.content == b"abcdefg"
    assert response.headers["transfer-encoding"] == "chunked"


def test_each_answer_times_out_at_its_own_deadline_whatever_order_they_were_sent() -> None:
    # One timer watches every answer awaited (http1.py _watch): a request sent later with a
    # shorter timeout must still expire first, and none before its own deadline.
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(silent.accept()[0])  # read nothing, answer nothing
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"
    timeouts = {"long": 1.5, "short": 0.2}
    ended: list[tuple[str, float]] = []

    async def main() -> None:
        transport = Http1Transport(max_connections=4, connect_timeout_s=5)

        async def one(name: str) -> None:
            started = anyio.current_time()
            with pytest.raises(httpx.ReadTimeout, match="within"):
                await transport.send(httpx.Request("POST", url, content=b"{}"), timeouts[name])
            ended.append((name, anyio.current_time() - started))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "long")
                await anyio.sleep(0.05)
                tg.start_soon(one, "short")
        finally:
            await transport.aclose()

    try:
        anyio.run(main)
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert [name for name, _ in ended] == ["short", "long"]
    assert all(waited >= timeouts[name] for name, waited in ended)


def test_the_client_runs_on_uvloop_as_on_asyncios_own_loop(server_factory) -> None:
    # uvicorn runs `llmrun serve` on uvloop wherever uvloop is installed, and its transports
    # are not asyncio.Transport subclasses: every call of a served recipe failed there.
    pytest.importorskip("uvloop")  # in the test extra, except on Windows
    server = server_factory({(0, 2): None})  # the third request: closed unanswered

    async def main() -> list[str]:
        transport = Http1Transport(max_connections=2, connect_timeout_s=5)
        url = f"http://127.0.0.1:{server.port}/x"
        try:
            texts = []
            for i in range(3):
                request = httpx.Request("GET", url)  # idempotent: sent again on a new one
                texts.append((await transport.send(request, 5 + i)).text)
            return texts
        finally:
            await transport.aclose()

    assert anyio.run(main, backend_options={"use_uvloop": True}) == ["ok"] * 3
    assert server.connections == 2
