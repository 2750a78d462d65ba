"""The default client against HTTP servers nobody here wrote: uvicorn (h11), hypercorn and
aiohttp's web server, over HTTP and HTTPS (a throwaway CA from trustme, trusted through
SSL_CERT_FILE), through the real `llmrun run`. Bodies arrive with Content-Length, chunked, and
gzip-encoded; every row must hold its own record's answer, each paid once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trustme

from .conformance_servers import ServerThread
from .conftest import (
    basic_recipe,
    llmrun_command,
    make_records,
    read_jsonl,
    write_jsonl,
    write_recipe,
)

RECORDS = 300


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CA certificate, server key and chain for 127.0.0.1) as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    authority = trustme.CA()
    ca, server = folder / "ca.pem", folder / "server.pem"
    authority.cert_pem.write_to_path(str(ca))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    return ca, server


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn", "aiohttp"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_answer_reaches_its_record(
    tmp_path: Path, pki: tuple[Path, Path], kind: str, scheme: str
) -> None:
    ca, server_pem = pki
    write_jsonl(tmp_path / "data.jsonl", make_records(RECORDS))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["SSL_CERT_FILE"] = str(ca)
    with ServerThread(kind, server_pem if scheme == "https" else None) as server:
        provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
        run = {"concurrency": 32, "max_retries": 0}  # no retry may hide a wrong answer
        recipe = write_recipe(tmp_path, basic_recipe(provider, run=run))
        result = subprocess.run(
            [*llmrun_command(), "run", str(recipe), "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(RECORDS)]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert row["text"] == f"answer for {row['id']}"
        assert row["attempts"] == 1
        assert row["response"]["request_id"] is None or row["response"]["request_id"]
