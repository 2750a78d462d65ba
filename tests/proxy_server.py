"""A small HTTP proxy on 127.0.0.1 for tests/test_wire_proxy.py: CONNECT tunnels (HTTPS) and
forwarding of absolute-form requests (plain HTTP), keep-alive on both, each request counted."""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit


class ProxyServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnels: list[str] = []  # CONNECT targets, host:port
        self.forwarded: list[str] = []  # absolute-form request targets
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, _, fields = head.partition(b"\r\n")
                method, target, version = line.decode("latin-1").split(" ")
                if method == "CONNECT":
                    with self.lock:
                        self.tunnels.append(target)
                    host, _, port = target.rpartition(":")
                    upstream = socket.create_connection((host, int(port)))
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    if buffer:
                        upstream.sendall(buffer)
                    _pipe_both(client, upstream)
                    return
                length = 0
                for field in fields.split(b"\r\n"):
                    name, _, value = field.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += client.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                url = urlsplit(target)
                with self.lock:
                    self.forwarded.append(target)
                if upstream is None:
                    upstream = socket.create_connection((url.hostname, url.port or 80))
                    threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                upstream.sendall(
                    f"{method} {path} {version}\r\n".encode("latin-1") + fields + b"\r\n\r\n" + body
                )
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _pipe_both(a: socket.socket, b: socket.socket) -> None:
    other = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    other.start()
    _pipe(a, b)
    other.join()
