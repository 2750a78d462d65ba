"""Faults: a worker killed mid-run is replaced, a driver killed and started again resumes; the
fault tests run the driver in this process so that they can reach a worker's process id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import ray
from conftest import (
    CLI,
    cli,
    ids_once,
    read_jsonl,
    recipe_file,
)
from llmrun_ray.driver import ray_engine

from llmrun.api import open_recipe
from llmrun.run.progress import make_progress
from llmrun.testing.fake_openai import FakeOpenAI


def _engine(recipe: Path, workers: int) -> Any:
    loaded, registry = open_recipe(recipe)
    return ray_engine(
        loaded, registry, make_progress("none"), workers=workers, handle_signals=False
    )


def test_a_worker_killed_mid_run_is_replaced_and_nothing_finished_is_called_again(
    cluster: str, tmp_path: Path
):
    n, concurrency = 300, 6
    with FakeOpenAI(latency_s=0.05) as server:
        recipe = recipe_file(tmp_path, server.url, n, f"{{concurrency: {concurrency}}}")
        out = tmp_path / "out" / "labels.jsonl"
        engine, cluster_ = _engine(recipe, workers=2)
        killed: list[int] = []

        after: dict[str, Any] = {}
        worker = cluster_.workers[0]

        def ask_then_stop() -> None:
            # The replacement is asked at the run's end, before Backends.close ends it (asked
            # while the run went on, a quick replacement could finish first; seen in CI).
            after.update(ray.get(worker.counts.remote()))
            cluster_.stop()

        engine.backends = dataclasses.replace(engine.backends, close=ask_then_stop)

        async def kill_one_worker_midway() -> None:
            # Polling the output file: it is what the driver writes, and no event says so.
            while not out.exists() or len(out.read_bytes().splitlines()) < n // 3:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            pid = await worker.pid.remote()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        async def main() -> Any:
            async with anyio.create_task_group() as group:
                group.start_soon(kill_one_worker_midway)
                summary = await engine.run()
                group.cancel_scope.cancel()
            return summary

        summary = anyio.run(main)
        calls = server.count()
    # The run's end ended its workers: their CPUs are the cluster's again (this process, the
    # driver, goes on holding the engine and its cluster).
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()
    assert killed and after["pid"] != killed[0], "the worker was replaced by a new process"
    assert after["processed"] > 0, "the replacement took the rest of its shard"
    assert cluster_.restarts >= 1
    assert summary.status == "completed" and summary.stats.ok == n
    ids_once(read_jsonl(out), n)
    # Only calls in flight in the killed worker are made again: at most its concurrency (and
    # rows it had made but not yet sent back, which the same bound covers in practice).
    assert n <= calls <= n + 2 * concurrency, calls


def test_the_driver_killed_and_started_again_resumes_the_job(cluster: str, tmp_path: Path):
    n = 400
    with FakeOpenAI(latency_s=0.05) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4}")
        out = tmp_path / "out" / "labels.jsonl"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        args = [*CLI, "run", str(recipe), "--address", cluster, "--workers", "2", "-q"]
        driver = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not out.exists() or len(out.read_bytes().splitlines()) < n // 4:
                assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.wait(timeout=60)
            if driver.stderr:
                driver.stderr.close()
        written = len(out.read_bytes().splitlines())
        assert written < n
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        calls = server.count()
    rows = read_jsonl(out)
    ids_once(rows, n)
    assert summary["resumed_ok"] >= n // 4
    assert summary["resumed_ok"] + summary["ok"] == n
    # Calls made twice: those in flight when the driver died (each engine task holds a group
    # of records on the workers: GROUPS_PER_WORKER x workers x run.concurrency at most)
    # plus what the orphaned workers sent before Ray stopped them.
    assert calls - n <= 2 * 2 * 4 + 2 * 4 * 5, calls
