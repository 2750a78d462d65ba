"""Batch mode killed with SIGKILL right after every step of the life cycle, then run again:
every id ends in the output exactly once and no record is submitted twice (counted by the fake)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from llmrun.batch.journal import KILL_ENV
from llmrun.testing.fake_batches import FakeBatches

from .conftest import read_jsonl, run_cli
from .test_batch_openai import setup

STEPS = [
    "written",
    "uploaded",
    "creating",
    "create-sent",  # the provider created the batch; its id is not recorded yet
    "created",
    "polled",
    "ended",
    "downloaded",
    "merge-written",  # rows written, the part not yet marked merged
    "merged",
]


@pytest.mark.parametrize("step", [*STEPS, "created:2", "merged:2"])
def test_kill_at_every_step_then_resume(tmp_path: Path, step: str) -> None:
    with FakeBatches() as fake:
        fake.outcomes = ["partial"]  # the first batch has failures to resubmit
        recipe = setup(tmp_path, fake.url, n=12, batch_max_requests=5)
        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: step})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        again = run_cli("run", str(recipe), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        ids = [r["id"] for r in rows]
        assert sorted(ids) == [f"r{i:05d}" for i in range(12)]  # each exactly once
        assert all(r["status"] == "ok" for r in rows)
        # Every record went out once, plus once more for each failed request of batch 1
        # (records 2 of every 3 in it), never because of the kill.
        first = fake.batches[next(iter(fake.batches))]
        failed = {line["custom_id"] for i, line in enumerate(first["lines"]) if i % 3 == 2}
        assert len(failed) >= 1
        assert {k: v for k, v in fake.submitted.items() if v != 1} == dict.fromkeys(failed, 2)
