"""A pool of endpoints (provider.base_urls, provider.endpoints) on the cluster: each endpoint and
key paced by the one limiter, a dead endpoint set aside for every worker, no secret given to the
limiter actor.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import (
    CLI,
    ids_once,
    llmrun,
    read_jsonl,
    recipe_file,
)

from llmrun.api import open_recipe
from llmrun.testing.fake_openai import FakeOpenAI


def regions_recipe(tmp_path: Path, a: FakeOpenAI, b: FakeOpenAI, n: int, run: str) -> Path:
    """provider.endpoints: two regions, each with its own key; a at 300 a minute."""
    recipe = recipe_file(tmp_path, a.url, n, run)
    text = recipe.read_text(encoding="utf-8")
    pool = (
        f'endpoints: [{{base_url: "{a.url}", api_keys: [key-a], requests_per_minute: 300}}, '
        f'{{base_url: "{b.url}", api_keys: [key-b]}}]'
    )
    recipe.write_text(text.replace(f'base_url: "{a.url}"', pool), encoding="utf-8")
    return recipe


def test_a_pool_of_endpoints_is_spread_over_the_workers_each_with_its_keys_and_limit(
    tmp_path: Path,
):
    # The cluster's limiter paces each (endpoint, key), as one process does. Before, every
    # worker sent everything to the first URL with the provider's keys.
    n = 80
    with (
        FakeOpenAI(latency_s=0.02, api_keys={"key-a"}) as a,
        FakeOpenAI(latency_s=0.02, api_keys={"key-b"}) as b,
    ):
        recipe = regions_recipe(tmp_path, a, b, n, "{concurrency: 4, engine: ray, workers: 2}")
        proc = llmrun("run", str(recipe), "--json", "-q")
        on_a, on_b = list(a.requests), list(b.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["ok"] == n
    rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
    ids_once(rows, n)
    assert all(r["status"] == "ok" for r in rows)
    # The workers' counts per endpoint reach the driver's summary (and its manifest).
    assert summary["endpoints"] == {
        a.url: {"ok": len(on_a), "failed": 0},
        b.url: {"ok": len(on_b), "failed": 0},
    }
    # Each region got its own key only (any other would be a 401 and retire it).
    assert {r.headers["authorization"] for r in on_a} == {"Bearer key-a"}
    assert {r.headers["authorization"] for r in on_b} == {"Bearer key-b"}
    # a at 300 a minute (5 a second) for the whole cluster; b unpaced takes the rest.
    assert len(on_a) >= 1 and len(on_b) > len(on_a)
    span = max(r.received_at for r in on_a) - min(r.received_at for r in on_a)
    assert len(on_a) <= 2 + span * 5.0 * 1.05, (len(on_a), span)


def test_the_limiter_actor_is_given_no_key_and_no_url_password(tmp_path: Path):
    # The actor's arguments are kept by Ray (its state API lists them): what it is given to
    # pace a pool of endpoints holds placeholders, never an endpoint's keys or the password
    # in its URL.
    import pickle

    from llmrun_ray.limiter import limiter_name, limiter_settings

    with FakeOpenAI() as a, FakeOpenAI() as b:
        recipe = regions_recipe(tmp_path, a, b, 4, "{concurrency: 4}")
        text = recipe.read_text(encoding="utf-8")
        with_password = a.url.replace("http://", "http://user:s3cret-pw@")
        recipe.write_text(text.replace(a.url, with_password), encoding="utf-8")
        loaded, _ = open_recipe(recipe)
    settings = limiter_settings(loaded)
    assert [e.url for e in settings["endpoints"]] == ["endpoint-0", "endpoint-1"]
    blob = pickle.dumps(settings) + limiter_name(loaded).encode()
    for secret in (b"s3cret-pw", b"key-a", b"key-b"):
        assert secret not in blob


def test_an_endpoint_killed_mid_run_is_set_aside_for_every_worker(cluster: str, tmp_path: Path):
    n = 400
    with FakeOpenAI(latency_s=0.02) as a, FakeOpenAI(latency_s=0.02) as b:
        recipe = recipe_file(tmp_path, a.url, n, "{concurrency: 4}")
        text = recipe.read_text(encoding="utf-8")
        recipe.write_text(
            text.replace(f'base_url: "{a.url}"', f'base_urls: ["{a.url}", "{b.url}"]'),
            encoding="utf-8",
        )
        out = tmp_path / "out" / "labels.jsonl"
        args = [*CLI, "run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not out.exists() or len(out.read_bytes().splitlines()) < n // 4:
                assert driver.poll() is None, driver.communicate()[1][-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.02)
            a.stop()  # killed: its connections dropped, new ones refused
            killed_at = a.count()
            stdout, stderr = driver.communicate(timeout=240)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate()
        on_b = b.count()
    assert driver.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["ok"] == n
    rows = read_jsonl(out)
    ids_once(rows, n)
    assert all(r["status"] == "ok" for r in rows)
    assert killed_at > 0 and on_b >= n - killed_at
    counted = json.loads(stdout)["endpoints"]
    assert counted[a.url]["failed"] > 0 and counted[b.url]["ok"] == on_b
    # The worker whose report made the actor set it aside warns, as one process does.
    assert stderr.decode().count(f"endpoint {a.url} set aside") == 1, stderr[-3000:]
