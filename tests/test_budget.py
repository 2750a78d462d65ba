"""run.budget_usd: the real CLI stops before the next call could pass the budget, says what was
spent, and a raised budget continues the same job."""

from __future__ import annotations

import json
from pathlib import Path

from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import make_records, read_jsonl, run_cli
from .test_run import calls_per_id, openai, setup_run

EXIT_OK, EXIT_USAGE, EXIT_BUDGET = 0, 2, 5
# USD per million tokens: each call here uses 7 input and 5 output tokens on the fake server.
PRICES = {"gpt-test": {"input": 1000.0, "output": 2000.0}}
CALL_COST = (7 * 1000.0 + 5 * 2000.0) / 1e6  # 0.017


def test_the_run_stops_before_the_budget_and_continues_when_raised(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        recipe = setup_run(
            tmp_path,
            openai(server),
            100,
            generation={"max_tokens": 8},
            prices=PRICES,
            run={"concurrency": 4, "budget_usd": 0.5},
        )
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
        assert result.returncode == EXIT_BUDGET, result.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        spent = sum(r["cost_usd"] for r in rows)
        assert spent <= 0.5
        assert all(r["status"] == "ok" and r["cost_usd"] == CALL_COST for r in rows)
        # Worst cases are reserved (estimated input + max_tokens output), so it stops with
        # some budget left, but not before the reservations could no longer fit.
        assert 10 <= len(rows) < 100
        assert server.count() == len(rows)  # every call made was paid for and written
        assert "run.budget_usd 0.5 reached: spent $" in result.stderr
        assert "raise run.budget_usd" in result.stderr
        summary = json.loads(result.stdout)
        assert summary["status"] == "budget"
        assert abs(summary["cost_usd"] - spent) < 1e-6
        manifest = json.loads((tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text())
        assert manifest["runs"][-1]["status"] == "budget"

        again = run_cli("run", str(recipe), "--set", "run.budget_usd=10", "--json", cwd=tmp_path)
        assert again.returncode == EXIT_OK, again.stderr
        summary = json.loads(again.stdout)
        assert abs(summary["job_cost_usd"] - 100 * CALL_COST) < 1e-6
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(100)]
    assert set(calls_per_id(server).values()) == {1}


def test_the_spend_already_in_the_output_counts(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        recipe = setup_run(
            tmp_path, openai(server), 40, generation={"max_tokens": 8}, prices=PRICES
        )
        first = run_cli("run", str(recipe), "--limit", "20", cwd=tmp_path)
        assert first.returncode == EXIT_OK, first.stderr
        # 20 calls cost 0.34: a budget of 0.35 leaves no room for the next call's worst case.
        result = run_cli("run", str(recipe), "--set", "run.budget_usd=0.35", cwd=tmp_path)
        assert result.returncode == EXIT_BUDGET, result.stderr
        assert server.count() == 20
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 20


def test_a_budget_without_a_known_price_is_refused_before_any_call(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        provider = openai(server, model="my-unpriced-model")
        recipe = setup_run(tmp_path, provider, 5, run={"budget_usd": 1})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        assert server.count() == 0
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "run.budget_usd" in result.stderr
    assert "no price known for model 'my-unpriced-model'" in result.stderr
    assert "prices:" in result.stderr


def test_a_signal_with_a_budget_set_is_an_interruption_not_the_budget(tmp_path: Path) -> None:
    import signal

    from .test_resume import Output, Run

    with FakeOpenAI(latency_s=0.3) as server:
        recipe = setup_run(
            tmp_path,
            openai(server),
            200,
            prices=PRICES,
            run={"concurrency": 8, "budget_usd": 100},
        )
        out = Output(tmp_path / "out.jsonl")
        run = Run(recipe)
        run.wait_until(lambda: out.lines() >= 8)
        run.process.send_signal(signal.SIGINT)
        code, stderr = run.finish()
        assert code == 130, stderr
        assert "run.budget_usd" not in stderr and "budget:" not in stderr
        assert len(out.rows()) == server.count()  # the calls in flight were drained
    manifest = json.loads((tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"
