"""Batch mode killed with SIGKILL right after every step of the life cycle, then run again:
every id ends in the output exactly once and no record is submitted twice (counted by the fake).

The scenarios are independent (each its own fake server and folder), so they run side by side:
each is two `llmrun` processes, and one after the other they would take most of a minute."""

from __future__ import annotations

import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llmrun.batch.journal import KILL_ENV
from llmrun.testing.fake_batches import FakeBatches

from .conftest import read_jsonl, run_cli
from .test_batch_openai import setup

STEPS = [
    "written",
    "uploaded",
    "creating",  # the intent to create is recorded, the request not sent
    "create-sent",  # the provider created the batch; its id is not recorded yet
    "created",
    "polled",
    "ended",
    "downloaded",
    "merge-written",  # rows written, the part not yet marked merged
    "merged",
    "created:2",  # the same steps for the second batch file
    "merged:2",
]


def scenario(step: str, folder: Path) -> list[str]:
    """Kill after ``step``, run again; what went wrong (nothing, when it works)."""
    problems: list[str] = []
    with FakeBatches() as fake:
        fake.outcomes = ["partial"]  # the first batch has failures to resubmit
        recipe = setup(folder, fake.url, n=12, batch_max_requests=5)
        killed = run_cli("run", str(recipe), cwd=folder, env={KILL_ENV: step})
        if killed.returncode != -signal.SIGKILL:
            return [f"{step}: not killed (exit {killed.returncode}): {killed.stderr[-500:]}"]
        again = run_cli("run", str(recipe), cwd=folder)
        if again.returncode != 0:
            return [f"{step}: rerun exit {again.returncode}: {again.stderr[-500:]}"]
        rows = read_jsonl(folder / "out.jsonl")
        ids = sorted(r["id"] for r in rows)
        if ids != [f"r{i:05d}" for i in range(12)]:
            problems.append(f"{step}: ids in the output: {ids}")
        if any(r["status"] != "ok" for r in rows):
            problems.append(f"{step}: error rows: {[r for r in rows if r['status'] != 'ok']}")
        # Every record went out once, plus once more for each failed request of batch 1
        # (every third one in it), never because of the kill.
        first = fake.batches[next(iter(fake.batches))]
        failed = {line["custom_id"] for i, line in enumerate(first["lines"]) if i % 3 == 2}
        twice = {k: v for k, v in fake.submitted.items() if v != 1}
        if not failed or twice != dict.fromkeys(failed, 2):
            problems.append(f"{step}: submitted more than once: {twice}, expected {failed}")
    return problems


@pytest.mark.slow
def test_kill_at_every_step_then_resume() -> None:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=4) as pool:
        folders = [Path(tmp) / f"s{i}" for i in range(len(STEPS))]
        for folder in folders:
            folder.mkdir()
        results = list(pool.map(scenario, STEPS, folders))
    problems = [p for found in results for p in found]
    assert not problems, "\n".join(problems)
