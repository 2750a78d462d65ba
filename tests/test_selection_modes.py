"""Every mode and command agrees on which records a recipe covers, for every selection key.

Direct, batch and auto modes run through the real ``llmrun`` command against the fake batch
server, which counts what reached it; ``plan``, ``status`` and ``validate`` only read, so they
run in this process (``read_cli``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.testing.fake_batches import FakeBatches

from .conftest import read_cli, read_jsonl, run_cli, write_jsonl, write_recipe

N = 60
ALL = [f"r{i:03d}" for i in range(N)]

# key -> (data section, the ids it must select when that can be said without hashing)
SELECTIONS: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "filter": ({"filter": "n < 10"}, ALL[:10]),
    "shard": ({"shard": "1/3"}, None),
    "sample-fraction": ({"sample": 0.25, "seed": 3}, None),
    "sample-count": ({"sample": 7, "seed": 3}, None),
    "offset": ({"offset": 50}, ALL[50:]),
    "limit": ({"limit": 8}, ALL[:8]),
    "all-together": ({"filter": "n % 2 == 0", "shard": "0/2", "offset": 1, "limit": 6}, None),
}


def make_recipe(folder: Path, url: str, data: dict[str, Any], mode: str) -> Path:
    write_jsonl(
        folder / "data.jsonl",
        [{"id": rid, "n": i, "text": f"record {i} " + "words " * 40} for i, rid in enumerate(ALL)],
    )
    recipe = {
        "name": "selection",
        "data": {"path": "data.jsonl", "id": "id", **data},
        "prompt": {"user": "n={{ n }}: {{ text }}"},
        "provider": {
            "name": "openai",
            "base_url": url,
            "api_keys": ["sk-selection-test"],
            "model": "gpt-4o-mini",
        },
        "run": {
            "mode": mode,
            "concurrency": 8,
            "batch_poll_s": 0.01,
            "batch_poll_max_s": 0.05,
            "auto_threshold": 0,  # auto mode: batches, whatever the count
        },
        "output": {"path": "out.jsonl"},
    }
    return write_recipe(folder, recipe)


def sent_ids(fake: FakeBatches) -> list[str]:
    """The record ids that reached the server, as batch lines or as direct calls."""
    return sorted(fake.submitted) + [""] * fake.count("POST", "/v1/chat/completions")


@pytest.fixture(scope="module")
def covered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Direct mode's ids for each key: what every other mode and command must agree with."""
    out: dict[str, list[str]] = {}
    for key, (data, expected) in SELECTIONS.items():
        folder = tmp_path_factory.mktemp(f"direct-{key}")
        with FakeBatches() as fake:
            recipe = make_recipe(folder, fake.url, data, "direct")
            proc = run_cli("run", str(recipe), "--quiet", cwd=folder)
            assert proc.returncode == 0, proc.stderr
            ids = sorted(r["id"] for r in read_jsonl(folder / "out.jsonl"))
            assert fake.count("POST", "/v1/chat/completions") == len(ids)
            assert not fake.submitted
        if expected is not None:
            assert ids == expected
        out[key] = ids
    return out


def test_direct_mode_selects_within_the_records(covered: dict[str, list[str]]) -> None:
    assert 0 < len(covered["shard"]) < N
    assert 0 < len(covered["sample-fraction"]) < N
    assert len(covered["sample-count"]) == 7
    together = covered["all-together"]
    assert len(together) == 6
    assert all(int(rid[1:]) % 2 == 0 for rid in together)


@pytest.mark.parametrize("mode", ["batch", "auto"])
@pytest.mark.parametrize("key", list(SELECTIONS))
def test_batch_modes_submit_only_the_selected_records(
    tmp_path: Path, covered: dict[str, list[str]], key: str, mode: str
) -> None:
    with FakeBatches() as fake:
        recipe = make_recipe(tmp_path, fake.url, SELECTIONS[key][0], mode)
        proc = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert sent_ids(fake) == covered[key]  # paid for exactly these, once each
        assert max(fake.submitted.values()) == 1
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == covered[key]


@pytest.mark.parametrize("key", list(SELECTIONS))
def test_plan_status_and_validate_count_the_selected_records(
    tmp_path: Path, covered: dict[str, list[str]], key: str
) -> None:
    expected = covered[key]
    recipe = make_recipe(tmp_path, "http://127.0.0.1:9/v1", SELECTIONS[key][0], "batch")
    plan_run = read_cli("plan", str(recipe), "--json")
    assert plan_run.returncode == 0, plan_run.stderr
    plan = json.loads(plan_run.stdout)
    assert plan["records"] == len(expected)
    assert plan["to_send"] == len(expected)

    status_run = read_cli("status", str(recipe), "--json")
    assert status_run.returncode == 0, status_run.stderr
    status = json.loads(status_run.stdout)
    assert status["total"] == len(expected)
    assert status["remaining"] == len(expected)

    checked = read_cli("validate", str(recipe), "--records", str(N))
    assert checked.returncode == 0, checked.stderr
    if key == "sample-count":  # validate reads the first records only: a count is not applied
        assert "data.sample (a count) is not applied" in checked.stderr
    else:
        assert f"{len(expected)} record(s) checked" in checked.stderr
