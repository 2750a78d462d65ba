"""End-to-end runs of the real `llmrun run` command against a fake OpenAI server on 127.0.0.1:
rows, error rows, retries, run-level failures, secrets, the lock, --fresh, --limit, torn lines."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import (
    basic_recipe,
    llmrun_command,
    make_records,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_recipe,
)

ROW_KEYS = [
    "id",
    "status",
    "text",
    "fields",
    "error",
    "response",
    "record",
    "attempts",
    "latency_s",
    "cost_usd",
    "cached",
    "key",
    "started_at",
    "finished_at",
    "recipe_hash",
]
EXIT_OK, EXIT_ERRORS, EXIT_ABORTED, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


def openai(server: FakeOpenAI, **options: Any) -> dict[str, Any]:
    return {"name": "openai", "base_url": server.url, "model": "gpt-test", **options}


def setup_run(
    folder: Path,
    provider: dict[str, Any],
    records: list[dict[str, Any]] | int = 10,
    **overrides: Any,
) -> Path:
    """data.jsonl + recipe.yaml in ``folder``; returns the recipe path."""
    if isinstance(records, int):
        records = make_records(records)
    write_jsonl(folder / "data.jsonl", records)
    return write_recipe(folder, basic_recipe(provider, **overrides))


def record_id_of(request: RecordedRequest) -> str | None:
    """The record a request is for: basic_recipe's user prompt starts with ``id=<id>``."""
    body = request.body if isinstance(request.body, dict) else {}
    for message in body.get("messages") or []:
        m = re.match(r"id=(\S+)", str(message.get("content", "")))
        if m:
            return m.group(1)
    return None


def calls_per_id(server: FakeOpenAI) -> Counter[str | None]:
    return Counter(record_id_of(r) for r in list(server.requests))


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {row["id"]: row for row in rows}
    assert len(out) == len(rows), "an id appears more than once in the output"
    return out


def test_all_ok_rows_carry_the_reply_and_the_body_arrives_as_set(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = setup_run(
        tmp_path,
        openai(fake_openai),
        12,
        generation={"temperature": 0.3, "max_tokens": 50},
    )
    result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(by_id(rows)) == [f"r{i:05d}" for i in range(12)]
    for row in rows:
        assert list(row) == ROW_KEYS
        n = int(row["id"][1:])
        assert row["status"] == "ok"
        assert row["text"] == f"echo: id={row['id']} record number {n}"
        assert row["error"] is None
        assert row["record"] == {"id": row["id"], "text": f"record number {n}"}
        assert row["attempts"] == 1
        assert row["latency_s"] >= 0
        assert row["started_at"] <= row["finished_at"]
        response = row["response"]
        assert response["model"] == "gpt-test"
        assert response["request_id"].startswith("req_")
        assert response["finish_reason"] == "stop"
        assert response["usage"]["input_tokens"] > 0
        assert response["usage"]["output_tokens"] > 0
        assert row["cost_usd"] is None  # gpt-test has no known price
    assert len({row["recipe_hash"] for row in rows}) == 1
    assert result.stderr.count("no price known for model 'gpt-test'") == 1

    assert fake_openai.count() == 12
    for request in fake_openai.requests:
        body = request.body
        assert body["model"] == "gpt-test"
        assert body["temperature"] == 0.3
        assert body["max_tokens"] == 50
        rid = record_id_of(request)
        assert rid is not None
        n = int(rid[1:])
        assert body["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"id={rid} record number {n}"},
        ]
        assert request.path == "/v1/chat/completions"

    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert (summary["ok"], summary["error"], summary["total"]) == (12, 0, 12)
    assert summary["tokens"]["input"] == sum(r["response"]["usage"]["input_tokens"] for r in rows)

    manifest = json.loads((tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text())
    assert manifest["recipe_hash"] == rows[0]["recipe_hash"]
    assert manifest["counts"] == {"ok": 12, "error": 0, "total": 12}
    assert manifest["runs"][-1]["status"] == "completed"
    assert manifest["runs"][-1]["written"] == 12


def test_malformed_lines_and_missing_variables_become_error_rows(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    good = make_records(6)
    lines = [json.dumps(r) for r in good[:3]]
    lines += [
        '{"id": "broken", "text": ',  # line 4: not JSON
        "[1, 2, 3]",  # line 5: JSON, not an object
        "",  # line 6: blank, skipped
        json.dumps({"id": "notext", "title": "no text field"}),  # line 7
        '{"id": "lone", "text": "half a pair: \\ud800"}',  # line 8: valid JSON, not UTF-8-able
    ]
    lines += [json.dumps(r) for r in good[3:]]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, basic_recipe(openai(fake_openai)))

    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 10
    for row in rows.values():
        assert list(row) == ROW_KEYS
    assert all(rows[r["id"]]["status"] == "ok" for r in good)  # the run went on
    assert rows["lone"]["status"] == "ok"
    assert rows["lone"]["record"]["text"] == "half a pair: \ud800"

    for where, words in (("data.jsonl:4", "not valid JSON"), ("data.jsonl:5", "JSON object")):
        row = rows[where]
        assert row["status"] == "error"
        assert row["error"]["type"] == "bad_input"
        assert row["error"]["message"].startswith(f"{where}: ")
        assert words in row["error"]["message"]
        assert row["attempts"] == 0
        assert row["record"] is None

    missing = rows["notext"]
    assert missing["status"] == "error"
    assert missing["error"]["type"] == "template"
    assert "text" in missing["error"]["message"]  # the missing name
    assert "title" in missing["error"]["message"]  # what the record has instead
    assert missing["error"]["where"] == "data.jsonl:7"
    assert missing["attempts"] == 0
    # Never sent: only the good records reached the server.
    assert calls_per_id(fake_openai) == Counter({r["id"]: 1 for r in [*good, {"id": "lone"}]})


def test_unreadable_data_stops_the_run(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = write_recipe(tmp_path, basic_recipe(openai(fake_openai)))  # no data.jsonl
    # A file that is not there is the recipe's fault, told before the run starts (issue 16).
    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "data.path: cannot read the data: no file" in result.stderr
    assert str(tmp_path / "data.jsonl") in result.stderr
    # One that is there but cannot be read stops the run once started.
    (tmp_path / "data.jsonl").mkdir()
    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_ABORTED, result.stderr
    assert "cannot read the records (jsonl loader)" in result.stderr
    assert str(tmp_path / "data.jsonl") in result.stderr
    assert fake_openai.count() == 0


def test_server_errors_are_retried_and_a_rejected_request_is_not(tmp_path: Path) -> None:
    flaky = {"r00001", "r00004", "r00007"}
    rejected = "r00005"
    failed_once: set[str] = set()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = record_id_of(request)
        if rid == rejected:
            body = {"error": {"message": f"Invalid 'messages[1]' for {rid}", "type": "x"}}
            return Fault(400, {"content-type": "application/json"}, json.dumps(body).encode())
        if rid in flaky and rid not in failed_once:
            failed_once.add(rid)
            return Fault(500, {"retry-after-ms": "10"})
        return None

    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(tmp_path, openai(server), 10)
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr

    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 10
    for rid in flaky:
        assert rows[rid]["status"] == "ok"
        assert rows[rid]["attempts"] == 2
    row = rows[rejected]
    assert row["status"] == "error"
    assert row["attempts"] == 1
    assert row["error"]["status"] == 400
    assert row["error"]["retryable"] is False
    assert row["error"]["type"] == "invalid_request"
    assert f"Invalid 'messages[1]' for {rejected}" in row["error"]["message"]
    others = set(rows) - flaky - {rejected}
    assert all(rows[rid]["status"] == "ok" and rows[rid]["attempts"] == 1 for rid in others)

    calls = calls_per_id(server)
    assert calls == Counter({rid: 2 if rid in flaky else 1 for rid in rows})
    summary = json.loads(result.stdout)
    assert summary["retries"] == 3
    assert summary["errors_by_code"] == {"invalid_request": 1}


def fingerprint_of(key: str) -> str:
    return "key#" + hashlib.sha256(key.encode()).hexdigest()[:8]


def test_a_rejected_key_stops_the_run_after_one_call(tmp_path: Path) -> None:
    key = "sk-wrong-" + "7" * 24
    (tmp_path / ".env").write_text(f"LLMRUN_TEST_KEY={key}\n", encoding="utf-8")
    with FakeOpenAI(api_keys={"sk-the-good-one"}) as server:
        provider = openai(server, api_keys=["${LLMRUN_TEST_KEY}"])
        recipe = setup_run(tmp_path, provider, 40, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        assert result.returncode == EXIT_ABORTED, result.stderr
        assert server.count() == 1  # not one per record, not one per worker
        assert server.requests[0].headers["authorization"] == f"Bearer {key}"
    assert "RunAborted" in result.stderr
    assert fingerprint_of(key) in result.stderr
    assert "401" in result.stderr
    assert "again to continue" in result.stderr
    assert_nowhere(key, tmp_path, result)
    manifest = json.loads((tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "aborted"
    assert fingerprint_of(key) in manifest["runs"][-1]["reason"]


def test_unknown_model_stops_the_run(tmp_path: Path) -> None:
    with FakeOpenAI(fault=lambda request: Fault(404)) as server:
        recipe = setup_run(tmp_path, openai(server), 20)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_ABORTED, result.stderr
    assert server.count() == 1
    assert "404" in result.stderr
    assert "'gpt-test'" in result.stderr
    assert "provider.model" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == []


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just freed by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_stops_the_run(tmp_path: Path) -> None:
    port = closed_port()
    provider = {"name": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
    recipe = setup_run(tmp_path, provider, 20, run={"concurrency": 4})
    result = run_cli("run", str(recipe), "--set", "run.max_retries=1", cwd=tmp_path)
    assert result.returncode == EXIT_ABORTED, result.stderr
    assert "cannot reach the provider at POST" in result.stderr
    assert f"http://127.0.0.1:{port}/v1/chat/completions after 2 attempts" in result.stderr
    assert "provider.base_url" in result.stderr
    assert f"run `llmrun run {recipe} --set=run.max_retries=1` again" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_bad_usage_exits_2_and_calls_nothing(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 3)
    result = run_cli("run", str(recipe), "--limit", "-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "--limit must be 0 or more" in result.stderr
    result = run_cli("run", str(recipe), "--set", "provider.name=nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope" in result.stderr
    assert fake_openai.count() == 0
    assert not (tmp_path / "out.jsonl").exists()


def assert_nowhere(secret: str, folder: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The secret is in no file under ``folder`` but .env, nor in the command's output."""
    assert secret not in result.stdout
    assert secret not in result.stderr
    checked = 0
    for path in folder.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert secret.encode() not in path.read_bytes(), path
            checked += 1
    assert checked >= 3  # recipe, data, output, manifest, lock...


def test_keys_appear_in_no_output_log_or_manifest(tmp_path: Path) -> None:
    key = "sk-llmrun-test-" + "c0ffee" * 4
    (tmp_path / ".env").write_text(f"LLMRUN_TEST_KEY={key}\n", encoding="utf-8")

    def echo_the_key(request: RecordedRequest) -> Fault | None:
        # A server that quotes the key back in an error (some proxies do).
        if record_id_of(request) == "r00002":
            sent = request.headers["authorization"].removeprefix("Bearer ")
            body = {"error": {"message": f"key {sent} may not use this model", "type": "x"}}
            return Fault(400, {"content-type": "application/json"}, json.dumps(body).encode())
        return None

    with FakeOpenAI(fault=echo_the_key) as server:
        provider = openai(server, api_keys=["${LLMRUN_TEST_KEY}"])
        recipe = setup_run(tmp_path, provider, 5)
        result = run_cli("run", str(recipe), "--progress", "plain", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr

    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {key}"}
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert rows["r00002"]["error"]["message"] == (
        f"HTTP 400: key {fingerprint_of(key)} may not use this model"
    )
    assert_nowhere(key, tmp_path, result)


def test_a_second_run_on_the_same_output_is_refused(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.latency_s = 0.2
    recipe = setup_run(tmp_path, openai(fake_openai), 100, run={"concurrency": 2})
    out = tmp_path / "out.jsonl"
    first = subprocess.Popen(
        [*llmrun_command(), "run", str(recipe), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0, first)
        second = run_cli("run", str(recipe), cwd=tmp_path)
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert "LockedError" in second.stderr
        assert "another llmrun run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        fresh = run_cli("run", str(recipe), "--fresh", cwd=tmp_path)
        assert fresh.returncode == EXIT_LOCKED, fresh.stderr
        assert not list(tmp_path.glob("out.old-*"))  # nothing moved from under the first run
        assert first.poll() is None  # the first run is unharmed...
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == EXIT_INTERRUPTED, stderr
    rows = by_id(read_jsonl(out))  # ...and wrote every row once
    assert len(rows) == fake_openai.count()


def wait_for(condition: Any, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Poll until ``condition()``; fail if the process ends first (an upper bound, not a test
    of speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the test could act"
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def test_fresh_moves_the_old_output_aside(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 5)
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(recipe), "--quiet", cwd=tmp_path).returncode == EXIT_OK
    first = out.read_bytes()
    # Files already named like the aside copy --fresh makes in the next minute (say, by a
    # --fresh run a moment ago): none may be overwritten.
    now = dt.datetime.now()
    decoys = []
    for s in range(60):
        stamp = (now + dt.timedelta(seconds=s)).strftime("%Y%m%dT%H%M%S")
        decoy = tmp_path / f"out.old-{stamp}.jsonl"
        decoy.write_text(f"decoy {s}\n")
        decoys.append(decoy)

    result = run_cli("run", str(recipe), "--fresh", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "moved the previous output aside" in result.stderr
    assert [d.read_text() for d in decoys] == [f"decoy {s}\n" for s in range(60)]
    [aside] = set(tmp_path.glob("out.old-*.jsonl")) - set(decoys)
    assert aside.read_bytes() == first
    assert str(aside) in result.stderr
    assert len(list((tmp_path / "out.jsonl.llmrun").glob("manifest.old-*.json"))) == 1

    rows = by_id(read_jsonl(out))
    assert len(rows) == 5
    assert fake_openai.count() == 10  # every record called again
    old_times = {r["finished_at"] for r in read_jsonl(aside)}
    assert not old_times & {r["finished_at"] for r in rows.values()}


def test_limit_then_resume_calls_only_the_rest(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 10)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", str(recipe), "--limit", "3", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["r00000", "r00001", "r00002"]
    assert json.loads(result.stdout)["total"] == 3

    result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["resumed_ok"], summary["ok"]) == (3, 7)
    assert sorted(by_id(read_jsonl(out))) == [f"r{i:05d}" for i in range(10)]
    assert calls_per_id(fake_openai) == Counter({f"r{i:05d}": 1 for i in range(10)})


def test_resume_warns_when_the_recipe_changed(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 6)
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(recipe), "--limit", "2", cwd=tmp_path).returncode == EXIT_OK

    unchanged = run_cli("run", str(recipe), "--limit", "4", cwd=tmp_path)
    assert unchanged.returncode == EXIT_OK
    assert "recipe changed" not in unchanged.stderr

    data = yaml.safe_load(recipe.read_text())
    data["prompt"]["user"] = "id={{ id }} Summarize: {{ text }}"
    recipe.write_text(yaml.safe_dump(data))
    changed = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert changed.returncode == EXIT_OK, changed.stderr
    assert "the recipe changed since out.jsonl was started" in changed.stderr
    assert "--fresh" in changed.stderr
    warnings = json.loads(changed.stdout)["warnings"]
    assert len([w for w in warnings if w.startswith("the recipe changed")]) == 1

    rows = read_jsonl(out)
    assert len(by_id(rows)) == 6
    hashes = [r["recipe_hash"] for r in rows]
    assert hashes[0] == hashes[3] != hashes[4] == hashes[5]
    assert rows[5]["text"] == "echo: id=r00005 Summarize: record number 5"


def test_a_torn_last_line_is_moved_aside_and_its_record_runs_again(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 8)
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(recipe), "--quiet", cwd=tmp_path).returncode == EXIT_OK
    lines = out.read_bytes().splitlines(keepends=True)
    # A crash mid-write: five whole rows, then half of the sixth.
    fragment = lines[5][: len(lines[5]) // 2]
    torn_id = json.loads(lines[5])["id"]
    out.write_bytes(b"".join(lines[:5]) + fragment)
    before = fake_openai.count()

    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "torn line" in result.stderr
    [aside] = (tmp_path / "out.jsonl.llmrun").glob("torn-*")
    assert aside.read_bytes() == fragment
    rows = by_id(read_jsonl(out))
    assert len(rows) == 8
    rerun = {json.loads(line)["id"] for line in lines[5:]}
    assert torn_id in rerun
    assert calls_per_id(fake_openai) - Counter({f"r{i:05d}": 1 for i in range(8)}) == Counter(
        {rid: 1 for rid in rerun}
    )
    assert fake_openai.count() - before == 3


def test_a_last_row_missing_only_its_newline_is_kept(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = setup_run(tmp_path, openai(fake_openai), 4)
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(recipe), "--quiet", cwd=tmp_path).returncode == EXIT_OK
    out.write_bytes(out.read_bytes().rstrip(b"\n"))

    assert run_cli("run", str(recipe), "--quiet", cwd=tmp_path).returncode == EXIT_OK
    assert len(by_id(read_jsonl(out))) == 4
    assert fake_openai.count() == 4  # the whole row was kept: nothing called twice
    assert not list((tmp_path / "out.jsonl.llmrun").glob("torn-*"))


def test_mock_provider_error_rate(tmp_path: Path) -> None:
    provider = {"name": "mock", "error_rate": 0.4, "seed": 7, "replies": ["yes", "no"]}
    run = {"concurrency": 4, "max_retries": 0}
    output = {"path": "out.jsonl", "include": ["text", "absent"]}
    recipe = setup_run(tmp_path, provider, 50, run=run, output=output)
    result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 50
    errors = [r for r in rows.values() if r["status"] == "error"]
    assert 0 < len(errors) < 50
    for row in errors:
        assert row["error"]["type"] == "server_error"
        assert row["error"]["status"] == 500
        assert row["error"]["retryable"] is True
        assert row["attempts"] == 1
        assert "mock failure" in row["error"]["message"]
    assert {r["text"] for r in rows.values() if r["status"] == "ok"} <= {"yes", "no"}
    for rid, row in rows.items():
        assert list(row) == ROW_KEYS
        assert row["record"] == {"text": f"record number {int(rid[1:])}"}  # include: [text]
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["error"]) == (50 - len(errors), len(errors))
    assert summary["errors_by_code"] == {"server_error": len(errors)}


def test_trio_backend_completes_a_run(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.latency_s = 0.01
    recipe = setup_run(tmp_path, openai(fake_openai), 30)
    result = run_cli("run", str(recipe), "--loop", "trio", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 30
    assert all(r["text"].startswith(f"echo: id={r['id']} ") for r in rows.values())
    assert fake_openai.count() == 30
    assert json.loads(result.stdout)["ok"] == 30


def test_the_loop_flag_reaches_the_run(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    # A uvloop that does not import (first on the path): `--loop uvloop` must refuse before
    # any call, and the default must run the job on asyncio's loop instead.
    broken = tmp_path / "site" / "uvloop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('built for another Python')\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    recipe = setup_run(tmp_path, openai(fake_openai), 5)
    refused = run_cli("run", str(recipe), "--loop", "uvloop", cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "uvloop is not installed (or does not import)" in refused.stderr
    assert fake_openai.count() == 0
    result = run_cli("run", str(recipe), "--json", cwd=tmp_path, env=env)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["ok"] == 5


def test_cost_is_counted_from_reported_usage_at_the_recipe_prices(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = setup_run(
        tmp_path,
        openai(fake_openai),
        5,
        prices={"gpt-test": {"input": 2.0, "output": 8.0}},
    )
    result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "no price known" not in result.stderr
    for row in read_jsonl(tmp_path / "out.jsonl"):
        usage = row["response"]["usage"]
        expected = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1e6
        assert abs(row["cost_usd"] - expected) < 1e-9
        assert row["cost_usd"] > 0
