"""A steps: recipe in batch mode (docs/steps.md): each step runs as its own batches against the
stateful fake of OpenAI's files + batches API, a record going on to its next step's batch as
soon as its previous step's batch is merged; killed with SIGKILL after each step of the batch
life cycle, no step of any record is submitted twice."""

from __future__ import annotations

import json
import signal
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmrun.batch.journal import KILL_ENV
from llmrun.testing.fake_batches import FakeBatches

from .conftest import read_jsonl, run_cli, write_jsonl, write_recipe

N = 12


def score_of(i: int) -> int:
    return i % 5 + 1


def recipe(folder: Path, url: str, **run: Any) -> Path:
    records = [{"id": f"r{i:05d}", "score": score_of(i)} for i in range(N)]
    write_jsonl(folder / "data.jsonl", records)
    data: dict[str, Any] = {
        "data": {"path": "data.jsonl", "id": "id"},
        "provider": {
            "name": "openai",
            "base_url": url,
            "api_keys": ["sk-test-secret-123"],
            "model": "gpt-4o-mini",
        },
        "steps": [
            {"name": "draft", "prompt": "STEP draft id={{ id }}"},
            {
                "name": "judge",
                "provider": {"model": "gpt-4o"},
                # The fake echoes the last user message: the grade is the record's own.
                "prompt": "STEP judge Score: {{ score }} of [{{ steps.draft.text }}]",
                "postprocess": [{"regex": {"pattern": "Score: (?P<score>[1-5])"}}],
            },
            {
                "name": "refine",
                "when": "steps.judge.fields.score | int < 3",
                "prompt": "STEP refine [{{ steps.draft.text }}]",
            },
        ],
        "run": {
            "mode": "batch",
            "batch_poll_s": 0.01,
            "batch_poll_max_s": 0.05,
            "batch_max_requests": 5,
            **run,
        },
        "output": {"path": "out.jsonl"},
    }
    return write_recipe(folder, data)


def submitted(fake: FakeBatches) -> Counter[tuple[str, str]]:
    """(step, record) of every request in every batch the fake received."""
    sent: Counter[tuple[str, str]] = Counter()
    for batch in fake.batches.values():
        for line in batch["lines"]:
            text = str(line["body"]["messages"][-1]["content"])
            sent[(text.split()[1], line["custom_id"])] += 1
    return sent


def check(rows: list[dict[str, Any]]) -> list[str]:
    problems = []
    by_id = {r["id"]: r for r in rows}
    if sorted(by_id) != [f"r{i:05d}" for i in range(N)] or len(rows) != N:
        problems.append(f"ids: {sorted(r['id'] for r in rows)}")
    for i in range(N):
        row = by_id.get(f"r{i:05d}")
        if row is None:
            continue
        steps = row["steps"]
        draft = f"echo: STEP draft id=r{i:05d}"
        low = score_of(i) < 3
        expected = {
            "draft": ("ok", draft),
            "judge": ("ok", f"echo: STEP judge Score: {score_of(i)} of [{draft}]"),
            "refine": ("ok", f"echo: STEP refine [{draft}]") if low else ("skipped", None),
        }
        got = {k: (v["status"], v.get("text")) for k, v in steps.items()}
        if row["status"] != "ok" or got != expected:
            problems.append(f"{row['id']}: {row['status']} {got}")
    return problems


def test_each_step_goes_as_its_own_batches(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        path = recipe(tmp_path, fake.url)
        done = run_cli("run", str(path), "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert not check(rows), check(rows)
        sent = submitted(fake)
        assert set(sent.values()) == {1}
        low = sum(1 for i in range(N) if score_of(i) < 3)
        assert Counter(step for step, _ in sent) == {"draft": N, "judge": N, "refine": low}
        for batch in fake.batches.values():  # one step (and one model) a batch
            steps = {str(x["body"]["messages"][-1]["content"]).split()[1] for x in batch["lines"]}
            models = {x["body"]["model"] for x in batch["lines"]}
            assert len(steps) == 1 and models == {"gpt-4o" if steps == {"judge"} else "gpt-4o-mini"}
        for row in rows:  # the batch discount, per step
            assert row["steps"]["draft"]["cost_usd"] == pytest.approx(
                (10 * 0.15 + 5 * 0.6) / 1e6 * 0.5
            )
            assert row["cost_usd"] == pytest.approx(
                sum(s.get("cost_usd") or 0 for s in row["steps"].values())
            )
        journal = json.loads((tmp_path / "out.jsonl.llmrun/batch/journal.json").read_text())
        assert {p["recipe_step"] for p in journal["parts"]} == {"draft", "judge", "refine"}
        assert "sk-test-secret-123" not in (tmp_path / "out.jsonl").read_text()


KILLS = ["merge-written", "merged", "created:2", "merged:2", "merge-written:4", "created:6"]


def scenario(point: str, folder: Path) -> list[str]:
    with FakeBatches() as fake:
        path = recipe(folder, fake.url)
        killed = run_cli("run", str(path), cwd=folder, env={KILL_ENV: point})
        if killed.returncode != -signal.SIGKILL:
            return [f"{point}: not killed (exit {killed.returncode}): {killed.stderr[-500:]}"]
        again = run_cli("run", str(path), cwd=folder)
        if again.returncode != 0:
            return [f"{point}: rerun exit {again.returncode}: {again.stderr[-500:]}"]
        problems = [f"{point}: {p}" for p in check(read_jsonl(folder / "out.jsonl"))]
        twice = {k: v for k, v in submitted(fake).items() if v != 1}
        if twice:
            problems.append(f"{point}: submitted more than once: {twice}")
    return problems


@pytest.mark.slow
def test_killed_at_each_point_no_step_is_submitted_twice() -> None:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=3) as pool:
        folders = [Path(tmp) / f"s{i}" for i in range(len(KILLS))]
        for folder in folders:
            folder.mkdir()
        problems = [p for found in pool.map(scenario, KILLS, folders) for p in found]
    assert not problems, "\n".join(problems)


def test_collected_in_direct_mode_the_next_steps_go_as_direct_calls(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        path = recipe(tmp_path, fake.url)
        # Killed once the drafts' first batch is merged: its records' judge part is written.
        killed = run_cli("run", str(path), cwd=tmp_path, env={KILL_ENV: "merged"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        direct = run_cli("run", str(path), "--mode", "direct", cwd=tmp_path)
        assert direct.returncode == 0, direct.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert not check(rows), check(rows)
        # No draft was asked twice: not in a batch, not as a direct call.
        drafts_in_batches = Counter(rid for (step, rid) in submitted(fake) if step == "draft")
        direct_drafts = Counter(
            str(body["messages"][-1]["content"]).split("id=")[1]
            for method, p, body in fake.requests
            if method == "POST"
            and p == "/v1/chat/completions"
            and str(body["messages"][-1]["content"]).startswith("STEP draft")
        )
        assert not set(drafts_in_batches) & set(direct_drafts)
        assert sum(drafts_in_batches.values()) + sum(direct_drafts.values()) == N
        # The judges of the drafts merged before the kill went direct, not in a batch.
        judged_direct = sum(
            1
            for method, p, body in fake.requests
            if method == "POST"
            and p == "/v1/chat/completions"
            and str(body["messages"][-1]["content"]).startswith("STEP judge")
        )
        assert judged_direct > 0
        every = submitted(fake) + Counter(
            (text.split()[1], text.rsplit("id=", 1)[1].split("]")[0])
            for method, p, body in fake.requests
            if method == "POST" and p == "/v1/chat/completions"
            for text in [str(body["messages"][-1]["content"])]
        )
        assert set(every.values()) == {1}, every  # each step of each record asked once
        assert "go on as direct calls" in direct.stderr
