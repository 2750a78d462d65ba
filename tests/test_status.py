"""`llmrun status` (counts, spend, what remains; no network) and `llmrun run --retry-errors`
(error rows called again, still one line per record, the old output kept)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import make_records, read_cli, read_jsonl, run_cli
from .test_run import calls_per_id, openai, record_id_of, setup_run

EXIT_OK, EXIT_ERRORS, EXIT_ABORTED = 0, 1, 3
PRICES = {"gpt-test": {"input": 1000.0, "output": 2000.0}}
BAD = {"r00003", "r00007", "r00011"}


def test_status_then_retry_errors(tmp_path: Path) -> None:
    refuse = True

    def fault(request: RecordedRequest) -> Fault | None:
        if refuse and record_id_of(request) in BAD:
            body = {"error": {"message": "Invalid 'messages': try later", "type": "x"}}
            return Fault(400, {"content-type": "application/json"}, json.dumps(body).encode())
        return None

    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(tmp_path, openai(server), 30, prices=PRICES)
        first = run_cli("run", str(recipe), "--limit", "20", cwd=tmp_path)
        assert first.returncode == EXIT_ERRORS, first.stderr
        calls_before = server.count()

        status = read_cli("status", str(recipe), "--json", cwd=tmp_path)
        assert status.returncode == EXIT_OK, status.stderr
        assert server.count() == calls_before  # status calls nothing
        report = json.loads(status.stdout)
        assert report["rows"] == 20 and report["ok"] == 17 and report["error"] == 3
        assert report["errors_by_type"] == {"invalid_request": 3}
        assert report["total"] == 30 and report["remaining"] == 10
        assert abs(report["spend_usd"] - 17 * 0.017) < 1e-6
        assert report["last_run"]["status"] == "completed"
        table = read_cli("status", str(recipe), cwd=tmp_path)
        assert "invalid_request" in table.stdout and "remaining" in table.stdout
        assert "--retry-errors" in table.stderr

        refuse = False
        again = run_cli("run", str(recipe), "--limit", "20", "--retry-errors", cwd=tmp_path)
        assert again.returncode == EXIT_OK, again.stderr
        assert "--retry-errors: 3 error row(s)" in again.stderr

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(20)]
    assert all(r["status"] == "ok" for r in rows)
    calls = calls_per_id(server)
    assert calls == Counter({r["id"]: 2 if r["id"] in BAD else 1 for r in rows})
    kept = list((tmp_path / "out.jsonl.llmrun").glob("retried-*.jsonl"))
    assert len(kept) == 1
    old = read_jsonl(kept[0])
    assert len(old) == 20 and {r["id"] for r in old if r["status"] == "error"} == BAD


def test_retry_errors_with_no_error_rows_changes_nothing(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        recipe = setup_run(tmp_path, openai(server), 5)
        assert run_cli("run", str(recipe), cwd=tmp_path).returncode == EXIT_OK
        before = (tmp_path / "out.jsonl").read_bytes()
        result = run_cli("run", str(recipe), "--retry-errors", cwd=tmp_path)
        assert result.returncode == EXIT_OK, result.stderr
        assert server.count() == 5
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert not list((tmp_path / "out.jsonl.llmrun").glob("retried-*"))


def test_status_of_a_job_not_started(tmp_path: Path) -> None:
    recipe = setup_run(
        tmp_path, {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}, 7
    )
    result = read_cli("status", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 0 and report["total"] == 7 and report["remaining"] == 7
    assert report["last_run"] is None


def test_a_hostile_state_folder_is_read_with_bounds_and_a_clear_error(tmp_path: Path) -> None:
    # A state folder may come with a shared output. A FIFO made status wait for a writer
    # forever; /dev/zero made it read until memory ran out; a damaged batch journal was an
    # internal error. Now a manifest that is not a file is no manifest, and a batch journal
    # that cannot be read stops the command with a message that names it.
    recipe = setup_run(tmp_path, {"name": "mock"}, 5)
    assert run_cli("run", str(recipe), "-q", cwd=tmp_path).returncode == EXIT_OK
    state = tmp_path / "out.jsonl.llmrun"
    (state / "manifest.json").unlink()
    os.mkfifo(state / "manifest.json")
    result = run_cli("status", str(recipe), "--json", cwd=tmp_path, timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["rows"] == 5  # the output itself still says what is done
    (state / "batch").mkdir()
    journal = state / "batch" / "journal.json"
    for damage in ("fifo", "text"):
        journal.unlink(missing_ok=True)
        if damage == "fifo":
            os.mkfifo(journal)
        else:
            journal.write_text('{"key": "k", "parts": [1]}')
        for command in (("status",), ("run", "-q")):
            result = run_cli(command[0], str(recipe), *command[1:], cwd=tmp_path, timeout=60)
            assert result.returncode == EXIT_ABORTED, result.stderr
            assert f"the batch journal {journal} cannot be read" in result.stderr
            assert "internal error" not in result.stderr


def test_status_shows_the_batches_of_a_batch_run_left_running(tmp_path: Path) -> None:
    from llmrun.batch.journal import KILL_ENV
    from llmrun.testing.fake_batches import FakeBatches

    from .test_batch_openai import setup

    with FakeBatches() as fake:
        fake.hold = True  # the batch stays in progress
        recipe = setup(tmp_path, fake.url, n=10, batch_max_requests=6)
        # The run stops once its batches are created and one is polled (still in progress).
        killed = run_cli("run", str(recipe), cwd=tmp_path, env={KILL_ENV: "polled"})
        assert killed.returncode != 0
        requests_before = len(fake.requests)

        result = read_cli("status", str(recipe), "--json", cwd=tmp_path)
        assert result.returncode == EXIT_OK, result.stderr
        assert len(fake.requests) == requests_before  # from the journal, no provider call
        report = json.loads(result.stdout)
        first, second = report["batches"]
        assert first["batch_id"] in fake.batches and first["part"] == "p0001"
        assert first["state"] == "in_progress" and first["step"] == "created"
        assert first["counts"]["total"] == 6 and first["requests"] == 6
        assert first["age_s"] >= 0
        assert second["batch_id"] in fake.batches and second["requests"] == 4
        assert second["part"] == "p0002" and second["counts"]["total"] == 4
        assert report["in_batches"] == 10 and report["remaining"] == 10 and report["rows"] == 0
        # The killed run left "running" in the manifest; no process holds the output.
        assert report["last_run"]["status"] == "running" and report["running"] is False

        table = read_cli("status", str(recipe), cwd=tmp_path, env={"COLUMNS": "200"})
        assert table.returncode == EXIT_OK, table.stderr
        assert first["batch_id"] in table.stdout and "in_progress" in table.stdout
        assert second["batch_id"] in table.stdout
        assert "total 6" in table.stdout and "total 4" in table.stdout
        assert "(10 in batches not merged yet)" in table.stdout
        assert "ended without a summary (killed?)" in table.stdout


def test_status_without_batch_state_lists_no_batches(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        recipe = setup_run(tmp_path, openai(server), 3)
        assert run_cli("run", str(recipe), cwd=tmp_path).returncode == EXIT_OK
    report = json.loads(read_cli("status", str(recipe), "--json", cwd=tmp_path).stdout)
    assert report["batches"] == [] and report["in_batches"] == 0 and report["rows"] == 3
    table = read_cli("status", str(recipe), cwd=tmp_path)
    assert "batches" not in table.stdout


def test_status_says_whether_the_run_the_manifest_calls_running_is(tmp_path: Path) -> None:
    from llmrun.job.store import RunState

    recipe = setup_run(
        tmp_path, {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}, 2
    )
    state = RunState(tmp_path / "out.jsonl")
    with state.locked():  # as a run in progress: it holds the lock, its manifest says running
        state.write_manifest({"runs": [{"status": "running", "started_at": "then"}]})
        report = json.loads(read_cli("status", str(recipe), "--json", cwd=tmp_path).stdout)
        table = read_cli("status", str(recipe), cwd=tmp_path, env={"COLUMNS": "200"}).stdout
    assert report["running"] is True and "then running" in table and "killed" not in table
