"""Batch mode against a stateful fake of OpenAI's files + batches API on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llmrun.api import run_recipe_sync
from llmrun.run.engine import RunSummary
from llmrun.testing.fake_batches import FakeBatches

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe

EXIT_BUDGET = 5


def batch_recipe(url: str, **run: Any) -> dict[str, Any]:
    provider = {
        "name": "openai",
        "base_url": url,
        "api_keys": ["sk-test-secret-123"],
        "model": "gpt-4o-mini",
    }
    recipe = basic_recipe(provider)
    recipe["run"] = {"mode": "batch", "batch_poll_s": 0.01, "batch_poll_max_s": 0.05, **run}
    return recipe


def run_here(recipe: Path, **kwargs: Any) -> RunSummary:
    """The run in this process: the CLI's start-up costs a second per run (the end-to-end
    paths through the real command are covered by the tests that use run_cli)."""
    return run_recipe_sync(recipe, **kwargs)


def setup(tmp_path: Path, url: str, n: int = 10, **run: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp_path / "data.jsonl", make_records(n))
    return write_recipe(tmp_path, batch_recipe(url, **run))


def test_batch_run_writes_every_record_once_with_batch_price(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=25, batch_max_requests=10)
        proc = run_cli("run", str(recipe), "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(25)]
        assert all(r["status"] == "ok" for r in rows)
        by_id = {r["id"]: r for r in rows}
        assert by_id["r00003"]["text"] == "echo: id=r00003 record number 3"
        # gpt-4o-mini: 10 in + 5 out tokens at the table's price, halved for batch
        assert by_id["r00003"]["cost_usd"] == pytest.approx((10 * 0.15 + 5 * 0.6) / 1e6 * 0.5)
        assert len(fake.batches) == 3  # 25 records, 10 per file
        assert max(fake.submitted.values()) == 1 and len(fake.submitted) == 25
        assert "sk-test-secret-123" not in (tmp_path / "out.jsonl").read_text()
        journal = (tmp_path / "out.jsonl.llmrun" / "batch" / "journal.json").read_text()
        assert "sk-test-secret-123" not in journal
        assert all(p["step"] == "merged" for p in json.loads(journal)["parts"])


def test_failed_expired_and_partial_batches_resubmit_only_the_failures(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        fake.outcomes = ["fail", "expire", "partial"]
        recipe = setup(tmp_path, fake.url, n=12, batch_max_requests=4)
        summary = run_here(recipe)
        assert summary.status == "completed" and summary.stats.error == 0
        assert any("the input file is not valid (fake)" in w for w in summary.warnings)
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(12)]
        assert all(r["status"] == "ok" for r in rows)
        lines = [[x["custom_id"] for x in fake.batches[b]["lines"]] for b in fake.batches]
        failed, expired, partial = lines[0], lines[1][2:], lines[2][2::3]
        again = {k for k, v in fake.submitted.items() if v == 2}
        assert again == {*failed, *expired, *partial}
        assert max(fake.submitted.values()) == 2


def test_resubmission_limit_turns_failures_into_error_rows(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        fake.outcomes = ["fail"] * 3
        recipe = setup(tmp_path, fake.url, n=3, batch_resubmits=2)
        summary = run_here(recipe)
        assert summary.status == "completed" and summary.stats.error == 3
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 3 and {r["status"] for r in rows} == {"error"}
        error = rows[0]["error"]
        assert error["type"] == "batch_failed"
        assert "the input file is not valid (fake)" in error["message"]
        assert set(fake.submitted.values()) == {3}  # the first time and 2 resubmissions
        assert {r["attempts"] for r in rows} == {3}


def test_batch_expired_after_24h_of_fake_time(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        fake.hold = True
        recipe = setup(tmp_path, fake.url, n=4, batch_resubmits=0)
        from llmrun.batch.journal import KILL_ENV

        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: "created"})
        assert killed.returncode != 0
        fake.advance(25 * 3600)  # a day passes: the next poll finds the batch expired
        proc = run_cli("run", str(recipe), cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert {r["error"]["type"] for r in rows} == {"batch_expired"}
        assert all(r["error"]["retryable"] for r in rows)


def test_lines_and_create_body_match_the_openai_spec(tmp_path: Path) -> None:
    from .test_openai_spec import SPEC, ChatSpec

    if not SPEC.is_file():
        pytest.skip(f"the OpenAI OpenAPI document is not at {SPEC}")
    spec = ChatSpec(SPEC)
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=3)
        assert run_here(recipe).stats.ok == 3
        lines = [x for b in fake.batches.values() for x in b["lines"]]
        creates = [body for m, p, body in fake.requests if (m, p) == ("POST", "/v1/batches")]
    assert len(lines) == 3 and len(creates) == 1
    for line in lines:
        assert set(line) == {"custom_id", "method", "url", "body"}
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert spec.problems(line["body"]) == []
    create_schema = spec.schemas["CreateBatchRequest"]
    import jsonschema
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    from .test_openai_spec import SPEC_URI

    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, DRAFT202012.create_resource(spec.document)
    )
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/components/schemas/CreateBatchRequest"}, registry=registry
    )
    assert list(validator.iter_errors(creates[0])) == []
    assert set(creates[0]) <= set(create_schema["properties"])


def test_cancel_records_what_finished_and_status_describes_it(tmp_path: Path) -> None:
    from llmrun.api import open_recipe
    from llmrun.batch.journal import KILL_ENV
    from llmrun.batch.status import describe

    with FakeBatches() as fake:
        fake.hold = True
        recipe = setup(tmp_path, fake.url, n=6)
        # Stop the run once its batch is created and polled once (in progress).
        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: "polled"})
        assert killed.returncode != 0
        rec, _ = open_recipe(recipe)
        [entry] = describe(rec)
        assert entry["batch_id"] in fake.batches and entry["step"] == "created"
        assert entry["state"] == "in_progress" and entry["counts"]["total"] == 6
        assert entry["requests"] == 6 and entry["age_s"] >= 0
        proc = run_cli("cancel", str(recipe), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert fake.count("POST", f"/v1/batches/{entry['batch_id']}/cancel") == 1
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}  # half had finished
        [entry] = describe(rec)
        assert entry["outcome"] == "cancelled" and entry["merged"]["again"] == 3
        fake.hold = False
        proc = run_cli("run", str(recipe), cwd=tmp_path)  # the rest goes in a new batch
        assert proc.returncode == 0, proc.stderr
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 6
        assert set(fake.submitted.values()) == {1} | ({2} if len(fake.batches) > 1 else set())


def test_auto_mode_goes_direct_for_a_small_job(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=5, mode="auto", auto_threshold=10)
        assert run_here(recipe).stats.ok == 5
        assert fake.batches == {} and fake.count("POST", "/v1/chat/completions") == 5
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 5 and rows[0]["cost_usd"] == pytest.approx((10 * 0.15 + 5 * 0.6) / 1e6)


def test_auto_mode_cancels_stragglers_past_the_deadline_and_calls_them_direct(
    tmp_path: Path,
) -> None:
    with FakeBatches() as fake:
        fake.hold = True  # the batch never finishes on its own
        recipe = setup(
            tmp_path, fake.url, n=12, mode="auto", auto_threshold=7, auto_deadline_s=0.05
        )
        assert run_here(recipe).stats.ok == 12
        [batch] = fake.batches.values()
        assert batch["status"] == "cancelled"
        assert fake.count("POST", "/v1/chat/completions") == 6  # the half it had not done
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(12)]
        assert all(r["status"] == "ok" for r in rows)


def test_budget_checked_against_the_estimate_before_any_batch(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=20, budget_usd=1e-6)
        proc = run_cli("run", str(recipe), "--json", cwd=tmp_path)
        assert proc.returncode == EXIT_BUDGET, proc.stderr  # as a direct run at its budget
        assert json.loads(proc.stdout)["status"] == "budget"
        assert "over run.budget_usd" in proc.stderr and "nothing was submitted" in proc.stderr
        assert "raise run.budget_usd" in proc.stderr
        assert fake.batches == {} and fake.files == {}
        manifest = json.loads((tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text())
        assert manifest["runs"][-1]["status"] == "budget"
        proc = run_cli("run", str(recipe), "--set", "run.budget_usd=1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 20 and len(fake.batches) == 1


def test_ids_a_provider_refuses_as_custom_id_are_mapped(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url)
        ids = ["plain-id", "with space/and slash", "é" * 3, "x" * 100]
        write_jsonl(tmp_path / "data.jsonl", [{"id": i, "text": "t"} for i in ids])
        assert run_here(recipe).stats.ok == 4
        assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == sorted(ids)
        sent = sorted(fake.submitted)
        assert "plain-id" in sent and len(sent) == 4
        assert all(len(c) <= 64 and c.isascii() and " " not in c for c in sent)


def test_render_errors_are_rows_and_nothing_else_is_sent_for_them(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url)
        write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": "t"}, {"id": "b"}])
        summary = run_here(recipe)
        assert (summary.stats.ok, summary.stats.error) == (1, 1)
        rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
        assert rows["a"]["status"] == "ok" and rows["b"]["error"]["type"] == "template"
        assert list(fake.submitted) == ["a"]


def test_sigint_while_waiting_for_a_batch_then_resume(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from .conftest import llmrun_command

    with FakeBatches() as fake:
        fake.hold = True
        recipe = setup(tmp_path, fake.url, n=4, batch_poll_s=300)
        journal = tmp_path / "out.jsonl.llmrun" / "batch" / "journal.json"
        proc = subprocess.Popen(
            [*llmrun_command(), "run", str(recipe)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(600):  # until the batch is created and the runner waits
                if journal.exists() and '"created"' in journal.read_text():
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)  # not the 300 s poll interval
        finally:
            proc.kill()
        assert proc.returncode == 130, err
        fake.hold = False
        again = run_cli("run", str(recipe), "--set", "run.batch_poll_s=0.01", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 4
        assert len(fake.batches) == 1 and set(fake.submitted.values()) == {1}


def test_fresh_moves_the_batch_state_aside(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=2)
        assert run_here(recipe).stats.ok == 2
        assert run_here(recipe, fresh=True).stats.ok == 2
        state = tmp_path / "out.jsonl.llmrun"
        assert len(list(state.glob("batch.old-*"))) == 1
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 2 and len(fake.batches) == 2


def test_budget_checked_against_actual_usage_cancels_running_batches(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        fake.usage = (100_000, 100_000)  # far more than the estimate: $0.0375 a reply
        fake.holds = {1}  # the second batch is still running when the first one ends
        # The estimate is ~$0.0003: only the replies' actual usage goes over the budget.
        recipe = setup(tmp_path, fake.url, n=4, batch_max_requests=2, budget_usd=0.01)
        proc = run_cli("run", str(recipe), "--json", cwd=tmp_path)
        assert proc.returncode == EXIT_BUDGET, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["status"] == "budget" and "run.budget_usd 0.01 reached" in summary["reason"]
        assert "over run.budget_usd" in proc.stderr
        first, second = fake.batches.values()
        assert first["status"] == "completed" and second["status"] == "cancelled"
        assert fake.count("POST", f"/v1/batches/{second['id']}/cancel") == 1
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 3  # the first batch's 2 and the half the second had finished
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(3 * 0.0375)
        assert summary["cost_usd"] == pytest.approx(3 * 0.0375)


def test_direct_mode_collects_batches_left_running_instead_of_calling_again(
    tmp_path: Path,
) -> None:
    from llmrun.batch.journal import KILL_ENV

    with FakeBatches() as fake:
        recipe = setup(tmp_path, fake.url, n=4)  # 4 records in a batch...
        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: "polled"})
        assert killed.returncode != 0
        write_jsonl(tmp_path / "data.jsonl", make_records(6))  # ...then 2 more records
        summary = run_here(recipe, overrides=["run.mode=direct"])
        assert summary.status == "completed" and summary.stats.ok == 6
        assert set(fake.submitted.values()) == {1} and len(fake.submitted) == 4
        assert fake.count("POST", "/v1/chat/completions") == 2  # only the 2 new ones


def test_cancel_while_a_run_polls_lets_that_run_record_what_finished(tmp_path: Path) -> None:
    import subprocess
    import time

    from .conftest import llmrun_command

    with FakeBatches() as fake:
        fake.hold = True
        recipe = setup(tmp_path, fake.url, n=4)
        journal = tmp_path / "out.jsonl.llmrun" / "batch" / "journal.json"
        proc = subprocess.Popen(
            [*llmrun_command(), "run", str(recipe)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(600):  # until the batch is created and in progress
                if journal.exists() and '"in_progress"' in journal.read_text():
                    break
                time.sleep(0.05)
            cancel = run_cli("cancel", str(recipe), cwd=tmp_path)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert cancel.returncode == 0, cancel.stderr
        assert "the running `llmrun run` records what they finished" in cancel.stderr
        assert proc.returncode == 130, err  # interrupted: records are left to send
        assert "was cancelled" in err
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
        assert len(fake.batches) == 1  # nothing submitted after the cancel


def test_batch_mode_over_a_pool_of_endpoints_sends_to_the_first_with_its_own_key(
    tmp_path: Path,
) -> None:
    # Batch mode sends to one endpoint, the provider's base_url: the first of
    # provider.endpoints, with that endpoint's key (the provider has none of its own).
    with FakeBatches() as fake:
        write_jsonl(tmp_path / "data.jsonl", make_records(12))
        recipe = batch_recipe(fake.url, batch_max_requests=10)
        provider = recipe["provider"]
        del provider["base_url"], provider["api_keys"]
        provider["endpoints"] = [
            {"base_url": fake.url, "api_keys": ["sk-east-secret-123"]},
            {"base_url": "http://127.0.0.1:9/v1", "api_keys": ["sk-west-secret-456"]},
        ]
        path = write_recipe(tmp_path, recipe)
        proc = run_cli("run", str(path), "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
        assert len(fake.submitted) == 12
        for text in (proc.stdout, proc.stderr, (tmp_path / "out.jsonl").read_text()):
            assert "sk-east-secret-123" not in text and "sk-west-secret-456" not in text


def test_hostile_part_files_stop_with_a_clear_error_and_bad_result_lines_go_again(
    tmp_path: Path,
) -> None:
    # The part files beside the journal may come with a shared output. A FIFO made the merge
    # wait for a writer forever; a result line its batch API could not read ended the run with
    # an internal error. Now a part file that is not a regular file stops the run naming it
    # (exit 3: the journal records batches already paid), and a result line that cannot be read
    # is no result: its record goes in the next batch.
    from llmrun.batch.journal import KILL_ENV

    with FakeBatches() as fake:
        for case in ("results-fifo", "records-fifo", "bad-lines"):
            folder = tmp_path / case
            folder.mkdir()
            recipe = setup(folder, fake.url, n=10)
            killed = run_cli("run", str(recipe), cwd=folder, env={KILL_ENV: "downloaded"})
            assert killed.returncode != 0
            part = folder / "out.jsonl.llmrun" / "batch" / "p0001.results.jsonl"
            if case == "records-fifo":
                part = part.with_name("p0001.records.jsonl")
            lines = part.read_bytes().splitlines(keepends=True)
            part.unlink()
            if case != "bad-lines":
                os.mkfifo(part)
                result = run_cli("run", str(recipe), cwd=folder, timeout=60)
                assert result.returncode == 3, result.stderr
                assert f"the batch file {part} cannot be read" in result.stderr
                assert "internal error" not in result.stderr
                continue
            before = sum(fake.submitted.values())
            bad = [b"[1]\n", b'{"custom_id": "x", "response": "up"}\n', b"not json\n"]
            part.write_bytes(b"".join(bad + lines[3:]))
            result = run_cli("run", str(recipe), cwd=folder)
            assert result.returncode == 0, result.stderr
            assert "3 result line(s) of p0001 could not be read" in result.stderr
            rows = read_jsonl(folder / "out.jsonl")
            assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(10)]
            assert all(r["status"] == "ok" for r in rows)
            assert sum(fake.submitted.values()) - before == 3  # only those went again


def test_the_batch_apis_answers_are_bounded_and_results_files_by_their_own_cap(
    tmp_path: Path,
) -> None:
    # httpx's client read a batch API's answers whole, whatever their size: a hostile or broken
    # server could exhaust memory. Each answer is now read within run.max_response_bytes, and a
    # results download within run.batch_max_results_bytes; past a cap the run stops (exit 3),
    # naming the setting, without retrying.
    with FakeBatches() as fake:
        caps = {"max_response_bytes": 4096}
        recipe = setup(tmp_path / "ok", fake.url, n=20, **caps)
        results = tmp_path / "ok" / "out.jsonl.llmrun" / "batch" / "p0001.results.jsonl"
        proc = run_cli("run", str(recipe), "--json", cwd=recipe.parent)
        assert proc.returncode == 0, proc.stderr
        # The results file is past the answers' cap: it went through its own.
        assert results.stat().st_size > 4096
        assert json.loads(proc.stdout)["ok"] == 20

        small = {**caps, "batch_max_results_bytes": 4096}
        recipe = setup(tmp_path / "results", fake.url, n=20, **small)
        proc = run_cli("run", str(recipe), cwd=recipe.parent)
        assert proc.returncode == 3, proc.stderr
        assert "over 4 KiB (run.batch_max_results_bytes)" in proc.stderr
        assert fake.count("GET", "/v1/files/") == 2  # one download each, none retried

        fake.pad = 8192  # every answer now floods past 4 KiB
        recipe = setup(tmp_path / "flood", fake.url, n=5, **caps)
        proc = run_cli("run", str(recipe), cwd=recipe.parent)
        assert proc.returncode == 3, proc.stderr
        assert "over 4 KiB (run.max_response_bytes)" in proc.stderr
        assert "internal error" not in proc.stderr


def test_batch_mode_warns_about_repeated_ids_once_not_at_every_round(tmp_path: Path) -> None:
    # Each round of batches plans over the whole input again, and the second reading met
    # every id a second time: every batch run warned "duplicate id" about its first records.
    with FakeBatches() as fake:
        recipe = setup(tmp_path / "distinct", fake.url, n=20, batch_max_requests=8)
        proc = run_cli("run", str(recipe), cwd=recipe.parent)
        assert proc.returncode == 0, proc.stderr
        assert "duplicate id" not in proc.stderr and "repeat an earlier" not in proc.stderr
        recipe = setup(tmp_path / "repeated", fake.url, n=20, batch_max_requests=8)
        records = make_records(20)
        records[7]["id"] = records[3]["id"]  # one real repeat
        write_jsonl(recipe.parent / "data.jsonl", records)
        proc = run_cli("run", str(recipe), cwd=recipe.parent)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("duplicate id") == 1, proc.stderr
        assert "duplicate id 'r00003' at data.jsonl:8" in proc.stderr
