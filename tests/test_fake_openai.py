"""Tests for llmrun.testing.fake_openai: real HTTP requests against 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

REPO_ROOT = Path(__file__).resolve().parents[1]


def chat_body(content: str = "hello rec-42", **extra: object) -> dict[str, object]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def test_url_and_models(server: FakeOpenAI, client: httpx.Client) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.url)
    r = client.get("/models")
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    assert [m["id"] for m in r.json()["data"]] == ["fake-model"]
    assert client.get("/models/fake-model").json()["id"] == "fake-model"
    assert client.get("/models/other").status_code == 404


def test_chat_completion_shape(client: httpx.Client) -> None:
    r = client.post("/chat/completions", json=chat_body("say hi to rec-42"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    data = r.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-test"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: say hi to rec-42"
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_reply_is_deterministic_and_uses_last_user_message(client: httpx.Client) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second rec-7"}]},
        ],
    }
    a = client.post("/chat/completions", json=body).json()
    b = client.post("/chat/completions", json=body).json()
    assert a["choices"][0]["message"]["content"] == "echo: second rec-7"
    assert a["choices"] == b["choices"]
    assert a["id"] != b["id"]


def test_n_choices(client: httpx.Client) -> None:
    data = client.post("/chat/completions", json=chat_body("a b", n=3)).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in data["choices"]} == {"echo: a b"}
    assert data["usage"]["completion_tokens"] == 3 * 3
    assert client.post("/chat/completions", json=chat_body(n=0)).status_code == 400


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_length_truncation(client: httpx.Client, key: str) -> None:
    data = client.post("/chat/completions", json=chat_body("one two three", **{key: 2})).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "echo: one"
    assert data["usage"]["completion_tokens"] == 2
    # a limit at least as large as the reply does not truncate
    data = client.post("/chat/completions", json=chat_body("one", **{key: 2})).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["content"] == "echo: one"


def test_custom_reply_callback() -> None:
    with FakeOpenAI(reply=lambda body: f"{len(body['messages'])} messages") as srv:
        r = httpx.post(srv.url + "/chat/completions", json=chat_body())
        assert r.json()["choices"][0]["message"]["content"] == "1 messages"


def test_callback_error_gives_500(capsys: pytest.CaptureFixture[str]) -> None:
    def boom(body: object) -> str:
        raise ValueError("boom")

    with FakeOpenAI(reply=boom) as srv:
        r = httpx.post(srv.url + "/chat/completions", json=chat_body())
    assert r.status_code == 500
    assert "ValueError: boom" in r.json()["error"]["message"]
    assert "ValueError" in capsys.readouterr().err


def test_errors_are_openai_shaped(client: httpx.Client) -> None:
    r = client.post("/chat/completions", content=b'{"model": ', headers={"content-type": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/nope", json={})
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.post("/chat/completions", json={"model": "m"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


def test_api_keys() -> None:
    good = "sk-good-0123456789abcdef"
    wrong = "sk-wrong-secret-9876543210"
    with FakeOpenAI(api_keys={good}) as srv:
        url = srv.url + "/chat/completions"
        ok = httpx.post(url, json=chat_body(), headers={"authorization": f"Bearer {good}"})
        assert ok.status_code == 200
        r = httpx.post(url, json=chat_body(), headers={"authorization": f"Bearer {wrong}"})
        assert r.status_code == 401
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_api_key"
        assert wrong not in r.text
        assert wrong[4:-4] not in r.text
        missing = httpx.post(url, json=chat_body())
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/models").status_code == 401


def test_fault_status_and_retry_after() -> None:
    def fault(req: RecordedRequest) -> Fault | None:
        if req.body["messages"][0]["content"] == "limit me":
            return Fault(status=429, headers={"Retry-After": "3"})
        return None

    with FakeOpenAI(fault=fault) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/chat/completions", json=chat_body("limit me"))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert r.headers["x-request-id"]
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        # the connection stays usable and other requests are answered normally
        assert c.post("/chat/completions", json=chat_body("fine")).status_code == 200
        r = c.post("/chat/completions", json=chat_body("limit me"))
        assert r.status_code == 429
    assert srv.count() == 3


def test_fault_custom_body_and_2xx_passthrough() -> None:
    faults = iter([Fault(status=503, body=b"overloaded"), Fault(status=200, headers={"x-a": "1"})])
    with FakeOpenAI(fault=lambda req: next(faults, None)) as srv:
        r = httpx.post(srv.url + "/chat/completions", json=chat_body())
        assert (r.status_code, r.content) == (503, b"overloaded")
        r = httpx.post(srv.url + "/chat/completions", json=chat_body("x"))
        assert r.status_code == 200
        assert r.headers["x-a"] == "1"
        assert r.json()["choices"][0]["message"]["content"] == "echo: x"


def test_drop_connection_is_a_client_error() -> None:
    with (
        FakeOpenAI(fault=lambda req: Fault(drop_connection=True)) as srv,
        pytest.raises(httpx.TransportError),
    ):
        httpx.post(srv.url + "/chat/completions", json=chat_body(), timeout=5)


def test_truncate_body_is_a_read_error_or_short_body() -> None:
    with FakeOpenAI(fault=lambda req: Fault(status=200, truncate_body=True)) as srv:
        try:
            r = httpx.post(srv.url + "/chat/completions", json=chat_body(), timeout=5)
        except httpx.TransportError as exc:
            assert "incomplete" in str(exc) or "closed" in str(exc)
        else:  # pragma: no cover - depends on the client's strictness
            assert len(r.content) < int(r.headers["content-length"])


def test_truncate_body_raw_socket() -> None:
    with FakeOpenAI(fault=lambda req: Fault(status=500, truncate_body=True)) as srv:
        port = int(srv.url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert head.startswith(b"HTTP/1.1 500 ")
    assert 0 < len(body) < length


def test_fault_delay_and_client_timeout() -> None:
    with FakeOpenAI(fault=lambda req: Fault(status=503, delay_s=0.3)) as srv:
        start = time.monotonic()
        r = httpx.post(srv.url + "/chat/completions", json=chat_body(), timeout=5)
        assert r.status_code == 503
        assert time.monotonic() - start >= 0.3
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/chat/completions", json=chat_body(), timeout=0.1)


def test_latency_requests_overlap() -> None:
    async def run(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            rs = await asyncio.gather(
                *(c.post("/chat/completions", json=chat_body(f"rec-{i}")) for i in range(20))
            )
        return [r.status_code for r in rs]

    with FakeOpenAI(latency_s=0.2) as srv:
        start = time.monotonic()
        statuses = asyncio.run(run(srv.url))
        elapsed = time.monotonic() - start
        assert srv.count() == 20
    assert statuses == [200] * 20
    assert 0.2 <= elapsed < 2.0


def test_requests_are_recorded(server: FakeOpenAI, client: httpx.Client) -> None:
    before = time.monotonic()
    client.post("/chat/completions?x=1", json=chat_body("rec-1"), headers={"X-Trace": "T1"})
    client.get("/models")
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ]
    first, second = server.requests
    assert first.headers["x-trace"] == "T1"
    assert all(name == name.lower() for name in first.headers)
    assert first.body == chat_body("rec-1")
    assert second.body is None
    assert before <= first.received_at <= second.received_at <= time.monotonic()
    assert server.count() == 1
    assert server.count("/v1/models") == 1
    assert server.count("/v1/other") == 0


def test_no_record_still_counts() -> None:
    with FakeOpenAI(record=False) as srv:
        for _ in range(3):
            httpx.post(srv.url + "/chat/completions", json=chat_body())
        assert srv.requests == []
        assert srv.count() == 3


def test_keep_alive_and_connection_close(server: FakeOpenAI) -> None:
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps(chat_body()).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request + b"\r\n" + body)  # keep-alive (HTTP/1.1 default)
        sock.sendall(request + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):  # ends only because the server closes
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert data.count(b"connection: close\r\n") == 1
    assert server.count() == 2


def test_stop_closes_the_port() -> None:
    srv = FakeOpenAI().start()
    url = srv.url
    assert httpx.get(url + "/models").status_code == 200
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=2)


def test_openai_sdk_compatibility() -> None:
    openai = pytest.importorskip("openai")
    with FakeOpenAI() as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0)
        try:
            completion = client.chat.completions.create(
                model="gpt-x", messages=[{"role": "user", "content": "hi rec-9"}]
            )
            assert completion.choices[0].message.content == "echo: hi rec-9"
            assert completion.usage is not None and completion.usage.total_tokens == 5
            stream = client.chat.completions.create(
                model="gpt-x",
                messages=[{"role": "user", "content": "streamed words here"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
        finally:
            client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: streamed words here"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_cli_subprocess(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "llmrun.testing.fake_openai", "--port", "0", "--latency", "0"]
    cmd += ["--model", "bench-model", "--no-record", "--stats-file", str(stats)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the CLI did not print its URL"
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        r = httpx.post(url + "/chat/completions", json=chat_body("cli rec-3"), timeout=5)
        assert r.json()["choices"][0]["message"]["content"] == "echo: cli rec-3"
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "bench-model"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == ""  # exactly one line was printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert json.loads(stats.read_text()) == {"requests": 2}
