"""llmrun-ray on a local 2-CPU Ray cluster against llmrun's fake OpenAI server (127.0.0.1).

The CLI tests run the real ``llmrun-ray`` command, joining the session's cluster by its address;
the fault tests run the driver in this process so that they can reach a worker's process id.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import ray
from conftest import read_jsonl, reviews, write_jsonl
from llmrun_ray.driver import ray_engine, shard_of
from llmrun_ray.limiter import get_limiter
from llmrun_ray.processor import processor

from llmrun.api import open_recipe
from llmrun.run.progress import make_progress
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

CLI = [sys.executable, "-c", "import sys; from llmrun_ray.cli import main; sys.exit(main())"]


def recipe_file(tmp_path: Path, url: str, n: int, run: str, keys: str = "[k1]") -> Path:
    write_jsonl(tmp_path / "data.jsonl", reviews(n))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""\
name: ray-test
data: {{loader: jsonl, path: data.jsonl, id: id}}
prompt: "Sentiment of this review, one word: {{{{ text }}}}"
provider: {{name: openai, base_url: "{url}", model: fake-model, api_keys: {keys}}}
run: {run}
prices:
  fake-model: {{input: 1000, output: 1000}}
output: {{path: out/labels.jsonl}}
""",
        encoding="utf-8",
    )
    return recipe


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def ids_once(rows: list[dict[str, Any]], n: int) -> None:
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"r{i:05d}" for i in range(n)], "every id exactly once"


def test_two_workers_write_every_id_once_into_the_one_output(cluster: str, tmp_path: Path):
    n = 240
    with FakeOpenAI(latency_s=0.02) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 8}")
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "--quiet")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert (summary["status"], summary["ok"], summary["error"]) == ("completed", n, 0)
        rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
        ids_once(rows, n)
        assert {r["status"] for r in rows} == {"ok"}
        # The reply belongs to its own record (the fake server echoes the prompt).
        assert all(f"(review {int(r['id'][1:])})" in r["text"] for r in rows)
        assert server.count() == n  # nothing called twice
        # Both shards had records: the split is by id hash, the same in every run.
        assert {shard_of(r["id"], 2) for r in rows} == {0, 1}
        # A second run finds everything done and calls nothing.
        again = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["resumed_ok"] == n
        assert server.count() == n
    assert "llmrun run" not in proc.stderr or "Traceback" not in proc.stderr


def test_run_engine_ray_in_the_recipe_runs_through_llmrun_itself(cluster: str, tmp_path: Path):
    n = 120
    with FakeOpenAI(latency_s=0.01) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 8, engine: ray, workers: 2}")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.run(
            [sys.executable, "-m", "llmrun", "run", str(recipe), "--address", cluster, "--json"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"engine ray: the calls run on the cluster at {cluster}" in proc.stderr
        rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
        ids_once(rows, n)
        assert server.count() == n
        # Both workers had records, and the output is the one any run writes.
        assert {shard_of(r["id"], 2) for r in rows} == {0, 1}
        assert json.loads(proc.stdout)["ok"] == n
        # --engine on the command line does the same for a recipe that does not say it.
        plain = recipe_file(tmp_path, server.url, n, "{concurrency: 8}")
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "llmrun",
                "run",
                str(plain),
                "--engine",
                "ray",
                "--workers",
                "2",
                "--address",
                cluster,
                "--json",
                "--fresh",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        ids_once(read_jsonl(tmp_path / "out" / "labels.jsonl"), n)
        assert server.count() == 2 * n


class Bucket:
    """The server's own limit: ``rate`` requests/s with a burst of ``burst`` (token bucket);
    a request past it gets a 429, as a provider answers."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = burst
        self.at = time.monotonic()
        self.refused = 0
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Fault | None:
        with self.lock:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
            if self.level < 1:
                self.refused += 1
                return Fault(status=429)
            self.level -= 1
            return None


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


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


def test_workers_answer_from_the_call_cache(cluster: str, tmp_path: Path):
    n = 60
    with FakeOpenAI(latency_s=0.01) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4, engine: ray, workers: 2}")
        text = (
            recipe.read_text(encoding="utf-8") + "cache: calls.db\ngeneration: {temperature: 0}\n"
        )
        recipe.write_text(text, encoding="utf-8")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [sys.executable, "-m", "llmrun", "run", str(recipe), "--address", cluster]
        first = subprocess.run(
            [*command, "--json"], capture_output=True, text=True, timeout=240, env=env, check=False
        )
        assert first.returncode == 0, first.stderr[-3000:]
        assert server.count() == n
        again = subprocess.run(
            [*command, "--json", "--fresh"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert server.count() == n  # every reply came from the cache the workers filled
        assert json.loads(again.stdout)["cached"] == n
    rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
    ids_once(rows, n)
    assert all(r["cached"] for r in rows)


STEPS = """\
name: ray-steps
data: {{loader: jsonl, path: data.jsonl, id: id}}
provider: {{name: openai, base_url: "{url}", model: fake-model, api_keys: [k1]}}
steps:
  - name: draft
    prompt: "STEP draft of {{{{ id }}}}: {{{{ text }}}}"
  - name: check
    prompt: "STEP check of {{{{ id }}}}: [{{{{ steps.draft.text[:40] }}}}]"
run: {{concurrency: 4, engine: ray, workers: 2}}
output: {{path: out/steps.jsonl}}
"""


def step_of(request: RecordedRequest) -> tuple[str, str]:
    text = str(request.body["messages"][-1]["content"])
    step, rid = text.split()[1], text.split()[3].rstrip(":")
    return step, rid


def test_a_steps_recipe_runs_each_record_through_its_steps_on_a_worker(
    cluster: str, tmp_path: Path
):
    n = 60
    write_jsonl(tmp_path / "data.jsonl", reviews(n))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with FakeOpenAI(latency_s=0.05) as server:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(STEPS.format(url=server.url), encoding="utf-8")
        command = [sys.executable, "-m", "llmrun", "run", str(recipe), "--address", cluster]
        # Killed once some records have rows: the steps the workers finished were relayed to
        # the driver's journal, so the next run sends none of them again.
        first = subprocess.Popen([*command, "-q"], env=env, stderr=subprocess.PIPE)
        output = tmp_path / "out" / "steps.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if output.exists() and output.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        journal = tmp_path / "out" / "steps.jsonl.llmrun" / "steps.jsonl"
        finished = set()
        if journal.exists():
            for line in journal.read_bytes().splitlines(keepends=True):
                if line.endswith(b"\n"):
                    entry = json.loads(line)
                    finished.add((entry["step"], entry["id"]))
        with_row = set()
        for line in output.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                row = json.loads(line)
                with_row.add(row["id"])
                finished |= {(s, row["id"]) for s in row["steps"]}
        # Drafts the workers had finished for records with no row yet reached the driver.
        assert any(rid not in with_row for _, rid in finished)
        sent_at_kill = collections.Counter(step_of(r) for r in server.requests)
        again = subprocess.run(
            [*command, "--json"], capture_output=True, text=True, timeout=240, env=env, check=False
        )
        assert again.returncode == 0, again.stderr[-3000:]
        sent = collections.Counter(step_of(r) for r in server.requests)
    rows = read_jsonl(output)
    ids_once(rows, n)
    for row in rows:
        assert row["status"] == "ok", row
        draft = row["steps"]["draft"]["text"]
        assert f"of {row['id']}:" in draft  # the fake echoes: each record's own reply
        assert row["text"] == row["steps"]["check"]["text"]
        assert f"[{draft[:40]}]" in row["text"]  # the second step saw the first one's answer
    resent = [k for k in finished if sent[k] != sent_at_kill[k]]
    assert not resent, f"finished steps sent again: {resent[:5]}"


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

        async def kill_one_worker_midway() -> None:
            # Polling the output file: it is what the driver writes, and no event says so.
            while not out.exists() or len(out.read_bytes().splitlines()) < n // 3:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            pid = await worker.pid.remote()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            # The replacement, asked while the run goes on (the run's end ends the workers): it
            # must process records of its shard before the run can end.
            while not after.get("processed"):
                with contextlib.suppress(ray.exceptions.RayActorError):
                    after.update(await worker.counts.remote())
                await anyio.sleep(0.05)

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


def test_processor_for_ray_data_batches(cluster: str, tmp_path: Path):
    n = 12
    with FakeOpenAI(latency_s=0.01) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4}")
        loaded, _ = open_recipe(recipe)
        process = processor(str(recipe))
        records = reviews(n)
        # Ray Data's default batch: a mapping of column -> values.
        batch = {"id": [r["id"] for r in records], "text": [r["text"] for r in records]}
        out = process(batch)
        # As map_batches uses it: pickled to a worker, with no key inside.
        remote = ray.get(ray.remote(lambda p, b: p(b)).remote(process, batch))
        acquired = ray.get(get_limiter(loaded).status.remote())["acquired"]
    assert out["id"] == batch["id"]  # one row per record, in order
    assert set(out["status"]) == {"ok"}
    assert json.loads(out["row"][0])["id"] == "r00000"
    assert remote["id"] == batch["id"]
    assert server.count() == 2 * n
    assert acquired >= 2 * n  # both went through the job's one limiter


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


def test_batch_mode_runs_at_the_driver_one_submitter(cluster: str, tmp_path: Path):
    from llmrun.testing.fake_batches import FakeBatches

    n = 25
    with FakeBatches() as fake:
        write_jsonl(tmp_path / "data.jsonl", reviews(n))
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"""\
name: ray-batch
data: {{loader: jsonl, path: data.jsonl, id: id}}
prompt: "Label: {{{{ text }}}}"
provider: {{name: openai, base_url: "{fake.url}", model: gpt-4o-mini, api_keys: [sk-b-1]}}
run: {{mode: batch, batch_poll_s: 0.01, batch_poll_max_s: 0.05, batch_max_requests: 10}}
output: {{path: out.jsonl}}
""",
            encoding="utf-8",
        )
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(fake.batches) == 3  # 25 records, 10 a file, submitted once
        assert len(fake.submitted) == n and max(fake.submitted.values()) == 1
    rows = read_jsonl(tmp_path / "out.jsonl")
    ids_once(rows, n)
    assert {r["status"] for r in rows} == {"ok"}


def test_the_users_trust_reaches_the_workers_and_nothing_more(cluster: str, tmp_path: Path):
    # A python: postprocessor runs only with --trust; the workers load the recipe themselves
    # and must get the driver's opt-ins, not more (without --trust: refused, nothing called).
    n = 10
    (tmp_path / "shout.py").write_text("def shout(result):\n    return {'loud': True}\n")
    with FakeOpenAI(latency_s=0.01) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4}")
        text = recipe.read_text().replace(
            "\noutput:", "\npostprocess: [{python: {function: 'shout:shout'}}]\noutput:"
        )
        recipe.write_text(text)
        refused = cli("run", str(recipe), "--address", cluster, "--workers", "2", "-q")
        assert refused.returncode != 0 and server.count() == 0
        proc = cli(
            "run", str(recipe), "--address", cluster, "--workers", "2", "--trust", "--json", "-q"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
    ids_once(rows, n)
    assert all(r["fields"] == {"loud": True} for r in rows)


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
        proc = subprocess.run(
            [sys.executable, "-m", "llmrun", "run", str(recipe), "--json", "-q"],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            check=False,
        )
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
