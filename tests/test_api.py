"""The Python API: `await llmrun.run_recipe(...)` on asyncio and trio, and `run_recipe_sync`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun.job.store import RunState
from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import basic_recipe, make_records, read_jsonl, write_recipe
from .test_run import closed_port, fingerprint_of, openai, record_id_of


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def setup_recipe(folder: Path, provider: dict[str, Any], n: int = 6) -> Path:
    """n good records and one malformed line (line 3)."""
    lines = [json.dumps(r) for r in make_records(n)]
    lines.insert(2, "{not json")
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write_recipe(folder, basic_recipe(provider))


@pytest.mark.anyio
async def test_run_recipe_returns_the_summary(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_recipe(tmp_path, openai(fake_openai))
    summary = await llmrun.run_recipe(recipe)
    assert isinstance(summary, llmrun.RunSummary)
    assert summary.status == "completed"
    assert summary.reason is None
    assert summary.output == str(tmp_path / "out.jsonl")
    stats = summary.stats
    assert (stats.ok, stats.error, stats.total, stats.written) == (6, 1, 7, 7)
    assert dict(stats.errors_by_code) == {"bad_input": 1}
    assert stats.input_tokens > 0
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 7
    assert fake_openai.count() == 6

    again = await llmrun.run_recipe(recipe)  # resumes: nothing left to do
    assert again.status == "completed"
    assert (again.stats.ok, again.stats.error) == (0, 0)
    assert (again.stats.resumed_ok, again.stats.resumed_error) == (6, 1)
    assert fake_openai.count() == 6
    assert again.to_json()["resumed_ok"] == 6


@pytest.mark.anyio
async def test_an_aborted_run_returns_status_and_reason(tmp_path: Path) -> None:
    key = "sk-api-wrong-0123456789"
    with FakeOpenAI(api_keys={"sk-right"}) as server:
        recipe = setup_recipe(tmp_path, openai(server, api_keys=["${API_TEST_KEY}"]))
        summary = await llmrun.run_recipe(recipe, environ={"API_TEST_KEY": key})
        assert server.count() == 1
    assert summary.status == "aborted"
    assert summary.reason is not None
    assert fingerprint_of(key) in summary.reason
    assert key not in summary.reason
    assert "provider.api_keys" in summary.reason
    assert summary.stats.ok == 0


def test_run_recipe_sync(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_recipe(tmp_path, openai(fake_openai), n=4)
    summary = llmrun.run_recipe_sync(recipe, limit=2)
    assert summary.status == "completed"
    assert (summary.stats.ok, summary.stats.total) == (2, 2)

    summary = llmrun.run_recipe_sync(recipe, backend="trio", overrides=["run.concurrency=1"])
    assert (summary.stats.resumed_ok, summary.stats.ok, summary.stats.error) == (2, 2, 1)
    assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")][:2] == ["r00000", "r00001"]
    assert sorted(record_id_of(r) or "" for r in fake_openai.requests) == [
        f"r{i:05d}" for i in range(4)
    ]


def test_run_recipe_sync_aborted_on_an_unreachable_endpoint(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    recipe = setup_recipe(tmp_path, {"name": "openai", "base_url": url, "model": "m"}, n=3)
    summary = llmrun.run_recipe_sync(recipe, overrides=["run.max_retries=0"])
    assert summary.status == "aborted"
    assert summary.reason is not None
    assert f"{url}/chat/completions" in summary.reason
    assert summary.stats.ok == 0


def test_a_locked_output_raises(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_recipe(tmp_path, openai(fake_openai))
    with RunState(tmp_path / "out.jsonl").locked(), pytest.raises(llmrun.LockedError) as info:
        llmrun.run_recipe_sync(recipe)
    assert "another llmrun run" in str(info.value)
    assert fake_openai.count() == 0
    assert llmrun.run_recipe_sync(recipe).stats.ok == 6  # the lock is free again
