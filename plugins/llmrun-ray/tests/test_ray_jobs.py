"""Jobs on the cluster: every record once in the one output, through the `llmrun-ray` command and
`run.engine: ray`, with the call cache, a `steps:` recipe, batch mode, the user's trust, and the
Ray Data processor.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from conftest import (
    cli,
    ids_once,
    llmrun,
    read_jsonl,
    recipe_file,
    reviews,
    write_jsonl,
)
from llmrun_ray.driver import shard_of
from llmrun_ray.limiter import get_limiter
from llmrun_ray.processor import processor

from llmrun.api import open_recipe
from llmrun.testing.fake_openai import FakeOpenAI, RecordedRequest


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
        proc = llmrun("run", str(recipe), "--address", cluster, "--json")
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
        again = llmrun(
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
        )
        assert again.returncode == 0, again.stderr[-3000:]
        ids_once(read_jsonl(tmp_path / "out" / "labels.jsonl"), n)
        assert server.count() == 2 * n


def test_workers_answer_from_the_call_cache(cluster: str, tmp_path: Path):
    n = 60
    with FakeOpenAI(latency_s=0.01) as server:
        recipe = recipe_file(tmp_path, server.url, n, "{concurrency: 4, engine: ray, workers: 2}")
        text = (
            recipe.read_text(encoding="utf-8") + "cache: calls.db\ngeneration: {temperature: 0}\n"
        )
        recipe.write_text(text, encoding="utf-8")
        command = ["run", str(recipe), "--address", cluster, "--json"]
        first = llmrun(*command)
        assert first.returncode == 0, first.stderr[-3000:]
        assert server.count() == n
        again = llmrun(*command, "--fresh")
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
        again = llmrun(*command[3:], "--json")
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


def test_batch_mode_runs_at_the_driver_one_submitter(cluster: str, tmp_path: Path):
    from llmrun.testing.fake_batches import FakeBatches

    n = 25
    with FakeBatches() as fake:
        run = "{mode: batch, batch_poll_s: 0.01, batch_poll_max_s: 0.05, batch_max_requests: 10}"
        recipe = recipe_file(tmp_path, fake.url, n, run)
        proc = cli("run", str(recipe), "--address", cluster, "--workers", "2", "--json", "-q")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(fake.batches) == 3  # 25 records, 10 a file, submitted once
        assert len(fake.submitted) == n and max(fake.submitted.values()) == 1
    rows = read_jsonl(tmp_path / "out" / "labels.jsonl")
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
