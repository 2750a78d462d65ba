"""Batch mode with the `anthropic` provider against a fake Message Batches API on 127.0.0.1."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from llmrun.api import run_recipe_sync
from llmrun.batch.journal import KILL_ENV
from llmrun.testing.fake_batches import FakeBatches
from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe


def setup(tmp_path: Path, url: str, n: int, **run: Any) -> Path:
    provider = {
        "name": "anthropic",
        "base_url": url.removesuffix("/v1"),
        "api_keys": ["sk-ant-secret-456"],
        "model": "claude-3-5-haiku-20241022",
    }
    recipe = basic_recipe(provider)
    recipe["run"] = {"mode": "batch", "batch_poll_s": 0.01, "batch_poll_max_s": 0.05, **run}
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp_path / "data.jsonl", make_records(n))
    return write_recipe(tmp_path, recipe)


def test_anthropic_batches_with_partial_and_expired_requests(tmp_path: Path) -> None:
    with FakeBatches("anthropic") as fake:
        fake.outcomes = ["partial", "expire"]
        recipe = setup(tmp_path, fake.url, n=8, batch_max_requests=4)
        summary = run_recipe_sync(recipe)
        assert summary.status == "completed" and summary.stats.ok == 8
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(8)]
        by_id = {r["id"]: r for r in rows}
        assert by_id["r00005"]["text"] == "echo: id=r00005 record number 5"
        assert by_id["r00005"]["response"]["usage"] == {"input_tokens": 10, "output_tokens": 5}
        first, second, _resubmitted = (
            [x["custom_id"] for x in b["lines"]] for b in fake.batches.values()
        )
        again = {k for k, v in fake.submitted.items() if v == 2}
        assert again == {first[2], *second[2:]}  # the 500 and the expired ones, only
        body = next(iter(fake.batches.values()))["lines"][0]["body"]
        assert body["model"] == "claude-3-5-haiku-20241022" and body["max_tokens"] > 0
        assert body["system"] and body["messages"][0]["role"] == "user"
        assert "sk-ant-secret-456" not in (tmp_path / "out.jsonl").read_text()


@pytest.mark.parametrize("step", ["create-sent", "polled", "merge-written"])
def test_anthropic_kill_and_resume(tmp_path: Path, step: str) -> None:
    with FakeBatches("anthropic") as fake:
        recipe = setup(tmp_path, fake.url, n=6, batch_max_requests=3)
        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: step})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        again = run_cli("run", str(recipe), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(6)]
        assert set(fake.submitted.values()) == {1} and len(fake.batches) == 2
        if step == "create-sent":
            assert "adopted batch" in again.stderr


def test_a_results_url_at_another_origin_is_not_sent_the_key(tmp_path: Path) -> None:
    # The results URL is the server's word and the key goes with the download: a batch API (or
    # a gateway the user allowed) naming results elsewhere had the key sent there, even over
    # plain HTTP. Only the batch API's own origin is followed; else the run stops (exit 3).
    with FakeBatches("anthropic") as fake, FakeOpenAI() as elsewhere:
        fake.results_base = elsewhere.url
        recipe = setup(tmp_path, fake.url, n=3)
        proc = run_cli("run", str(recipe), cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        origin = elsewhere.url.removesuffix("/v1")
        assert f"results_url is at {origin}, not at the batch API's" in proc.stderr
        assert elsewhere.total_requests == 0
        assert "sk-ant-secret-456" not in proc.stderr
        # Not a URL at all (a NUL in the host): the same clear stop, not an internal error.
        fake.results_base = "http://a\x00b"
        again = setup(tmp_path / "nul", fake.url, n=3)
        proc = run_cli("run", str(again), cwd=again.parent)
        assert proc.returncode == 3, proc.stderr
        assert "results_url is not a URL" in proc.stderr
