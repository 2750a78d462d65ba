"""Proxies from the environment, as httpx reads them: HTTP_PROXY forwards plain HTTP,
HTTPS_PROXY tunnels HTTPS with CONNECT, ALL_PROXY covers both, NO_PROXY exempts hosts; in direct
and in batch mode, through the real `llmrun run`, with a real proxy on 127.0.0.1 in between."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from llmrun.testing.fake_batches import FakeBatches

from .conftest import (
    basic_recipe,
    llmrun_command,
    make_records,
    read_jsonl,
    write_jsonl,
    write_recipe,
)
from .hostile_server import Exchange, HostileServer, answer
from .proxy_server import ProxyServer

PROXY_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
RECORDS = 20


def fine(ex: Exchange) -> bool:
    ex.send(answer(ex.record_id))
    return True


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    return authority, pem


def server_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    with ProxyServer() as server:
        yield server


def run_with(tmp_path: Path, recipe: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_NAMES}
    return subprocess.run(
        [*llmrun_command(), "run", str(recipe), "--json"],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def direct_run(tmp_path: Path, server: HostileServer, **env: str) -> list[dict[str, Any]]:
    write_jsonl(tmp_path / "data.jsonl", make_records(RECORDS))
    provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
    recipe = write_recipe(tmp_path, basic_recipe(provider, run={"concurrency": 4}))
    result = run_with(tmp_path, recipe, **env)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == RECORDS
    for row in rows:
        assert row["status"] == "ok"
        assert row["text"] == f"answer for {row['id']}"
    return rows


def test_http_proxy_forwards_every_plain_http_call(tmp_path: Path, proxy: ProxyServer) -> None:
    with HostileServer(fine) as server:
        direct_run(tmp_path, server, HTTP_PROXY=proxy.url)
        assert len(server.requests) == RECORDS
    assert len(proxy.forwarded) == RECORDS
    assert all(t.startswith(f"http://127.0.0.1:{server.port}/v1/") for t in proxy.forwarded)


def test_https_proxy_tunnels_https_with_connect(
    tmp_path: Path, proxy: ProxyServer, ca: tuple[trustme.CA, Path]
) -> None:
    authority, pem = ca
    with HostileServer(fine, tls=server_tls(authority)) as server:
        direct_run(tmp_path, server, HTTPS_PROXY=proxy.url, SSL_CERT_FILE=str(pem))
        assert len(server.requests) == RECORDS
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{server.port}"}
    assert proxy.forwarded == []


def test_all_proxy_in_lower_case_covers_plain_http(tmp_path: Path, proxy: ProxyServer) -> None:
    with HostileServer(fine) as server:
        direct_run(tmp_path, server, all_proxy=proxy.url)
    assert len(proxy.forwarded) == RECORDS


def test_no_proxy_sends_the_named_host_direct(tmp_path: Path, proxy: ProxyServer) -> None:
    with HostileServer(fine) as server:
        direct_run(tmp_path, server, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        assert len(server.requests) == RECORDS
    assert proxy.forwarded == [] and proxy.tunnels == []


def test_batch_mode_goes_through_the_proxy(tmp_path: Path, proxy: ProxyServer) -> None:
    with FakeBatches() as fake:
        write_jsonl(tmp_path / "data.jsonl", make_records(6))
        provider = {"name": "openai", "base_url": fake.url, "model": "gpt-4o-mini"}
        provider["api_keys"] = ["sk-test-secret-123"]
        recipe = basic_recipe(provider)
        recipe["run"] = {"mode": "batch", "batch_poll_s": 0.01, "batch_poll_max_s": 0.05}
        path = write_recipe(tmp_path, recipe)
        result = run_with(tmp_path, path, HTTP_PROXY=proxy.url)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(6)]
    assert all(r["status"] == "ok" for r in rows)
    paths = [t.split("/", 3)[3] for t in proxy.forwarded]
    assert "v1/files" in paths and "v1/batches" in paths  # upload and create went through it
