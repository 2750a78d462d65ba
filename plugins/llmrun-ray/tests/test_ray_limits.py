"""One limiter and one budget for the cluster: the rate limit, a key shared by two jobs, a retired
key, the budget, and a key's first request lost with its worker.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import (
    CLI,
    Bucket,
    cli,
    ids_once,
    most_in_window,
    read_jsonl,
    recipe_file,
)

from llmrun.testing.fake_openai import FakeOpenAI


def test_requests_per_minute_holds_for_the_cluster_not_per_worker(cluster: str, tmp_path: Path):
    # 1200/min = 20/s over four workers. Each worker alone paced at 1200/min would send four
    # times that; the server refuses anything past 20/s, holding one second of it (a burst of
    # 20, as providers describe their limits): that second also absorbs the delays between
    # the limiter's even starts and their arrival on a busy machine.
    n, rate = 100, 20.0
    bucket = Bucket(rate, burst=rate)
    with FakeOpenAI(latency_s=0.05, fault=bucket) as server:
        recipe = recipe_file(
            tmp_path, server.url, n, "{concurrency: 8, requests_per_minute: 1200, max_retries: 0}"
        )
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "4", "--json", "-q")
        times = [r.received_at for r in server.requests]
    assert bucket.refused == 0, f"{bucket.refused} refused: the limit was passed"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["ok"] == n
    assert len(times) == n
    ids_once(read_jsonl(tmp_path / "out" / "labels.jsonl"), n)
    # Counted over any 2.5 s window, no more than the limit allows (2%, and the one second of
    # arrival delays the server's bucket allows too): 71, where four workers each at the limit
    # would send the 100 in 1.25 s.
    assert most_in_window(times, 2.5) <= 2.5 * rate * 1.02 + rate
    # And it ran at the limit, not far under it: 100 starts at 20/s take about 5 s.
    assert max(times) - min(times) >= (n - 1) / rate * 0.95


def test_two_jobs_on_one_key_share_its_limit(cluster: str, tmp_path: Path):
    # Two different recipes (two outputs, two job hashes) on the same key at 1200/min = 20/s,
    # run at the same time on the cluster: together they keep the key's 20/s, where two
    # limiters (one per job, as before) would send 40/s and be refused.
    n, rate = 60, 20.0
    bucket = Bucket(rate, burst=rate)
    with FakeOpenAI(latency_s=0.05, fault=bucket) as server:
        runs = []
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            recipe = recipe_file(
                folder, server.url, n, "{concurrency: 4, requests_per_minute: 1200, max_retries: 0}"
            )
            text = recipe.read_text(encoding="utf-8").replace("one word", f"one word ({name})")
            recipe.write_text(text, encoding="utf-8")
            runs.append(
                subprocess.Popen(
                    [*CLI, "run", str(recipe), "--address", cluster, "--workers", "1", "-q"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                )
            )
        errors = [run.communicate(timeout=240)[1] for run in runs]
        times = sorted(r.received_at for r in server.requests)
    assert [run.returncode for run in runs] == [0, 0], errors
    assert bucket.refused == 0, f"{bucket.refused} refused: the two jobs passed the key's limit"
    assert len(times) == 2 * n
    # Both jobs ran at once (their requests interleave), and together at the key's pace.
    assert most_in_window(times, 3.0) <= 3.0 * rate * 1.02 + rate
    for name in ("a", "b"):
        ids_once(read_jsonl(tmp_path / name / "out" / "labels.jsonl"), n)


def test_a_retired_key_is_retired_on_every_worker(cluster: str, tmp_path: Path):
    n = 60
    with FakeOpenAI(latency_s=0.02, api_keys={"good"}) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4}", keys="[bad, good]")
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert proc.returncode == 0, proc.stderr[-3000:]
        used = collections.Counter(r.headers.get("authorization") for r in server.requests)
    ids_once(read_jsonl(tmp_path / "out" / "labels.jsonl"), n)
    # One request learnt that the key is bad, for the whole cluster (not one per worker).
    assert used["Bearer bad"] == 1
    assert used["Bearer good"] == n
    assert "bad" not in proc.stdout + proc.stderr.replace("bad key", "")


def test_one_budget_for_the_cluster(cluster: str, tmp_path: Path):
    # 1000 USD per million tokens: a call's worst case is about 0.1 USD, so 1 USD allows few.
    n = 200
    with FakeOpenAI(latency_s=0.02) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4, budget_usd: 1.0}")
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert proc.returncode == 5, proc.stderr[-3000:]  # EXIT_BUDGET
        summary = json.loads(proc.stdout)
    assert summary["status"] == "budget"
    rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
    assert 0 < len(rows) < n
    assert len({r["id"] for r in rows}) == len(rows)
    assert sum(r["cost_usd"] for r in rows) <= 1.0
    assert server.count() == len(rows)


def test_a_keys_first_request_lost_with_its_worker_does_not_stall_the_key():
    # The limiter's body, without Ray: a worker took the key's first request (which goes
    # alone) and died without reporting; past the call's timeout the key is free again.
    import asyncio

    from llmrun_ray.limiter import Limiter

    async def main() -> tuple[Any, Any]:
        limiter = Limiter(1, {"timeout_s": 0.1})
        limiter.probe_s = 0.3
        first = await limiter.acquire(0)
        second = await asyncio.wait_for(limiter.acquire(0), timeout=10)
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first, tuple) and first[2] is True  # the probe
    assert isinstance(second, tuple) and second[2] is True  # the key is probed again
