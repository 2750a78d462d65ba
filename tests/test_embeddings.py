"""The `openai-embeddings` provider through the real CLI against the fake server's
/v1/embeddings: several records per request, each row with its own vector and usage share."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.testing.openai_bodies import fake_vector

from .conftest import make_records, read_jsonl, run_cli, write_jsonl, write_recipe


def embeddings(server: FakeOpenAI, **options: Any) -> dict[str, Any]:
    return {"name": "openai-embeddings", "base_url": server.url, "model": "emb-test", **options}


def embed_recipe(
    folder: Path,
    provider: dict[str, Any],
    records: list[dict[str, Any]],
    generation: dict[str, Any] | None = None,
) -> Path:
    write_jsonl(folder / "data.jsonl", records)
    return write_recipe(
        folder,
        {
            "name": "embed",
            "generation": generation or {},
            "data": {"path": "data.jsonl", "id": "id"},
            "prompt": {"system": "ignored by embeddings", "user": "{{ text }}"},
            "provider": provider,
            "run": {"concurrency": 4, "max_retries": 1},
            "output": {"path": "out.jsonl"},
        },
    )


def embedding_requests(server: FakeOpenAI) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path == "/v1/embeddings"]


def test_n_records_make_ceil_n_over_b_requests_each_row_its_own_vector(
    tmp_path: Path, fake_openai: FakeOpenAI
):
    records = make_records(23)
    recipe = embed_recipe(
        tmp_path, embeddings(fake_openai, batch_size=5), records, {"temperature": 0.5}
    )
    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Generation keys do not apply to embeddings: dropped, said once for the run.
    assert result.stderr.count("generation.temperature is not supported") == 1

    requests = embedding_requests(fake_openai)
    assert len(requests) == math.ceil(23 / 5) == fake_openai.total_requests
    sizes = sorted(len(r.body["input"]) for r in requests)
    assert sizes == [3, 5, 5, 5, 5]
    sent = [text for r in requests for text in r.body["input"]]
    assert sorted(sent) == sorted(r["text"] for r in records)  # each record once, user text only
    for r in requests:
        assert r.body["model"] == "emb-test" and r.body["encoding_format"] == "float"
        assert set(r.body) == {"model", "input", "encoding_format"}  # no temperature

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == [r["id"] for r in records]
    for row in rows:
        assert row["status"] == "ok", row
        # The fake embeds each text deterministically: the vector is this record's own.
        assert row["response"]["vector"] == fake_vector(row["record"]["text"])
        assert row["text"] is None
    # Usage is shared out: the members' input tokens add up to each request's total.
    assert sum(row["response"]["usage"]["input_tokens"] for row in rows) == sum(
        len(t.split()) for t in sent
    )


def test_dimensions_and_a_batch_of_one(tmp_path: Path, fake_openai: FakeOpenAI):
    recipe = embed_recipe(
        tmp_path, embeddings(fake_openai, batch_size=1, dimensions=3), make_records(3)
    )
    result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    requests = embedding_requests(fake_openai)
    assert len(requests) == 3 and all(r.body["dimensions"] == 3 for r in requests)
    for row in read_jsonl(tmp_path / "out.jsonl"):
        assert row["response"]["vector"] == fake_vector(row["record"]["text"], 3)


def test_a_failed_group_makes_an_error_row_for_each_member(tmp_path: Path):
    def reject_second(request: RecordedRequest) -> Fault | None:
        if "record number 5" in request.body["input"]:
            body = {"error": {"message": "Invalid input", "type": "invalid_request_error"}}
            return Fault(status=400, body=json.dumps(body).encode())
        return None

    with FakeOpenAI(fault=reject_second) as server:
        recipe = embed_recipe(tmp_path, embeddings(server, batch_size=4), make_records(8))
        result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # finished, with error rows
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "out.jsonl")}
    assert len(rows) == 8
    failed = [row for row in rows.values() if row["status"] == "error"]
    assert "r00005" in {row["id"] for row in failed} and len(failed) == 4
    for row in failed:
        assert row["error"]["type"] == "invalid_request" and row["error"]["status"] == 400
    for row in rows.values():
        if row["status"] == "ok":
            assert row["response"]["vector"] == fake_vector(row["record"]["text"])
