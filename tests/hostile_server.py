"""A raw-socket HTTP server on 127.0.0.1 that misbehaves on purpose, for tests/test_wire_hostile.py.

Each request is read whole (head and Content-Length body), the record it is for is read from the
prompt (``id=<id>`` as tests/conftest.basic_recipe writes it), and a ``behaviour`` callable
chooses what goes back on the socket: a correct OpenAI chat answer naming that id, with or
without tricks around it, or something hostile. Every byte written is counted, so a test can
assert how much a client read before it gave up.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exchange:
    """One request on one connection, as the behaviour sees it."""

    connection: int
    number: int  # the request's position on its connection (0: the first)
    record_id: str
    sock: socket.socket
    server: HostileServer

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        with self.server.lock:
            self.server.bytes_sent += len(data)


Behaviour = Callable[[Exchange], bool]  # False: close the connection after this request


def chat_body(record_id: str, text: str | None = None) -> bytes:
    answer = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text or f"answer for {record_id}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    return json.dumps(answer).encode()


def answer(record_id: str, *, extra_headers: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    body = chat_body(record_id)
    return (
        version + b" 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra_headers + b"\r\n" + body
    )


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body that inflates to ``inflated`` zero bytes, made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(inflated // len(zeros))]
    parts.append(packer.flush())
    return b"".join(parts)


@dataclass
class HostileServer:
    behaviour: Behaviour
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context
    sock: socket.socket = field(init=False)
    port: int = field(init=False)
    connections: int = 0
    requests: list[str] = field(default_factory=list)  # record ids, in arrival order
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                number = self.connections
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn, number), daemon=True).start()

    def _handle(self, conn: socket.socket, connection: int) -> None:
        buffer, number = b"", 0
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
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
                        data = conn.recv(65536)
                        if not data:
                            return
                        rest += data
                    body, buffer = rest[:length], rest[length:]
                    found = re.search(rb"id=(\w+)", body)
                    record_id = found.group(1).decode() if found else "?"
                    with self.lock:
                        self.requests.append(record_id)
                    exchange = Exchange(connection, number, record_id, conn, self)
                    if not self.behaviour(exchange):
                        return
                    number += 1
        except (
            OSError,
            ssl.SSLError,
        ):  # the client gave up on an endless answer: that is the point
            return
