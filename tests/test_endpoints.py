"""A pool of endpoints (provider.base_urls): replicas of one model behind different ports. The
real CLI against two fake servers on 127.0.0.1; counts on the servers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from llmrun.api import run_recipe_sync
from llmrun.job.summary import RunSummary
from llmrun.run import limits
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import llmrun_command, read_cli, read_jsonl, run_cli
from .test_run import by_id, setup_run

EXIT_OK = 0
UPPER_BOUND_S = 60.0  # only to turn a hang into a failure; never a test of speed


def pool(*servers: FakeOpenAI) -> dict[str, object]:
    return {"name": "openai", "model": "gpt-test", "base_urls": [s.url for s in servers]}


def test_records_are_spread_over_every_endpoint(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.02) as a, FakeOpenAI(latency_s=0.02) as b:
        recipe = setup_run(tmp_path, pool(a, b), 200, run={"concurrency": 16})
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
        counts = a.count(), b.count()
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 200 and all(r["status"] == "ok" for r in rows.values())
    assert sum(counts) == 200
    assert min(counts) >= 40, counts  # both did a fair share (the soonest start wins)
    status = json.loads(read_cli("status", str(recipe), "--json", cwd=tmp_path).stdout)
    assert status["last_run"]["endpoints"] == {
        a.url: {"ok": counts[0], "failed": 0},
        b.url: {"ok": counts[1], "failed": 0},
    }
    summary = json.loads(result.stdout)
    assert summary["endpoints"] == {
        a.url: {"ok": counts[0], "failed": 0},
        b.url: {"ok": counts[1], "failed": 0},
    }


def test_an_endpoint_killed_mid_run_leaves_every_record_ok_on_the_other(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.02) as a, FakeOpenAI(latency_s=0.02) as b:
        recipe = setup_run(tmp_path, pool(a, b), 600, run={"concurrency": 16})
        out = tmp_path / "out.jsonl"
        with open(tmp_path / "stderr.txt", "w") as log:
            process = subprocess.Popen(
                [*llmrun_command(), "run", str(recipe), "--quiet"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + UPPER_BOUND_S
        while not out.exists() or out.read_bytes().count(b"\n") < 100:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        a.stop()  # killed: its connections dropped, new ones refused
        killed_at = a.count()
        code = process.wait(timeout=UPPER_BOUND_S)
        on_b = b.count()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == EXIT_OK, stderr
    rows = by_id(read_jsonl(out))
    assert len(rows) == 600 and all(r["status"] == "ok" for r in rows.values())
    assert killed_at > 0 and on_b >= 600 - killed_at
    assert f"endpoint {a.url} set aside" in stderr


def test_an_endpoint_that_goes_silent_mid_run_is_set_aside_and_the_other_carries_on(
    tmp_path: Path,
) -> None:
    lock = threading.Lock()
    answered = 0

    def silent_after_50(request: RecordedRequest) -> Fault | None:
        nonlocal answered
        with lock:
            answered += 1
            return None if answered <= 50 else Fault(200, delay_s=UPPER_BOUND_S)

    with (
        FakeOpenAI(latency_s=0.01, fault=silent_after_50) as a,
        FakeOpenAI(latency_s=0.01) as b,
    ):
        recipe = setup_run(tmp_path, pool(a, b), 400, run={"concurrency": 8, "timeout_s": 0.5})
        result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path, timeout=UPPER_BOUND_S)
        on_a = a.count()
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 400 and all(r["status"] == "ok" for r in rows.values())
    assert f"endpoint {a.url} set aside" in result.stderr
    # Once silent, it holds at most the workers' requests until their timeouts set it aside
    # (three in a row), not a share of every record left.
    assert on_a - 50 <= 2 * 8, on_a


def test_an_endpoint_back_after_being_set_aside_is_used_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process (the Python API, in a thread) so that REPROBE_S can be cut from 10 s.
    monkeypatch.setattr(limits, "REPROBE_S", 0.3)
    with FakeOpenAI(latency_s=0.02) as a, FakeOpenAI(latency_s=0.02) as b:
        port = int(a.url.rsplit(":", 1)[1].split("/")[0])
        # No limit: the endpoint still up is always free to start, which must not keep the
        # other from being tried again.
        recipe = setup_run(tmp_path, pool(a, b), 1200, run={"concurrency": 4})
        out = tmp_path / "out.jsonl"
        summaries: list[RunSummary] = []
        worker = threading.Thread(target=lambda: summaries.append(run_recipe_sync(recipe)))
        worker.start()
        deadline = time.monotonic() + UPPER_BOUND_S
        while not out.exists() or out.read_bytes().count(b"\n") < 100:
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        a.stop()
        # Back only once set aside (its requests dropped, then refused three times in a row).
        log = tmp_path / "out.jsonl.llmrun" / "run.log"
        while f"endpoint {a.url} set aside" not in log.read_text(encoding="utf-8"):
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        with FakeOpenAI(latency_s=0.02, port=port) as back:
            worker.join(UPPER_BOUND_S)
            on_back = back.count()
    assert summaries and summaries[0].status == "completed"
    rows = by_id(read_jsonl(out))
    assert len(rows) == 1200 and all(r["status"] == "ok" for r in rows.values())
    assert on_back >= 100, on_back  # tried again, then given its share (about half of the rest)
    warnings = summaries[0].warnings
    assert any(w.startswith(f"endpoint {a.url} set aside") for w in warnings), warnings
    assert f"endpoint {a.url} answers again" in warnings


def test_the_live_progress_shows_each_endpoint(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.05) as a, FakeOpenAI(latency_s=0.05) as b:
        recipe = setup_run(tmp_path, pool(a, b), 200, run={"concurrency": 4})
        # Plain progress prints its status line at the start and at the end.
        result = run_cli("run", str(recipe), "--progress", "plain", cwd=tmp_path)
        counts = a.count(), b.count()
    assert result.returncode == EXIT_OK, result.stderr
    last = [line for line in result.stderr.splitlines() if "endpoints:" in line][-1]
    for server, n in zip((a, b), counts, strict=True):
        assert f"{server.url} {n:,} ok 0 failed" in last, last


def test_an_endpoint_with_a_password_in_its_url_is_shown_without_it(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.01) as a, FakeOpenAI(latency_s=0.01) as b:
        urls = [s.url.replace("http://", "http://team:hunter2-Secret@") for s in (a, b)]
        provider = {"name": "openai", "model": "gpt-test", "base_urls": urls}
        recipe = setup_run(tmp_path, provider, 40, run={"concurrency": 4})
        result = run_cli("run", str(recipe), "--progress", "plain", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "endpoints:" in result.stderr and a.url in result.stderr
    assert "hunter2-Secret" not in result.stderr
    log = (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8")
    manifest = (tmp_path / "out.jsonl.llmrun" / "manifest.json").read_text(encoding="utf-8")
    assert "hunter2-Secret" not in log and "hunter2-Secret" not in manifest
    assert a.url in manifest


KEY_A, KEY_B = "sk-region-a-0123456789abcdef", "sk-region-b-0123456789abcdef"


def regions(a: FakeOpenAI, b: FakeOpenAI, a_per_minute: float) -> dict[str, object]:
    """provider.endpoints: two regions, each with its own key (from its own variable) and
    the first with its own request limit."""
    return {
        "name": "openai",
        "model": "gpt-test",
        "endpoints": [
            {
                "base_url": a.url,
                "api_keys": ["${REGION_A_KEY}"],
                "requests_per_minute": a_per_minute,
            },
            {"base_url": b.url, "api_keys": ["${REGION_B_KEY}"]},
        ],
    }


def test_each_endpoint_sends_its_own_keys_within_its_own_limit(tmp_path: Path) -> None:
    env = {"REGION_A_KEY": KEY_A, "REGION_B_KEY": KEY_B}
    # Each server takes only its own key (401 for any other, which would retire it).
    with (
        FakeOpenAI(latency_s=0.01, api_keys={KEY_A}) as a,
        FakeOpenAI(latency_s=0.01, api_keys={KEY_B}) as b,
    ):
        recipe = setup_run(tmp_path, regions(a, b, 300), 120, run={"concurrency": 8})
        plan = read_cli("plan", str(recipe), cwd=tmp_path, env=env)
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path, env=env)
        on_a, on_b = list(a.requests), list(b.requests)
    assert plan.returncode == 0, plan.stderr
    host_a, host_b = (s.url.split("//")[1].split("/")[0] for s in (a, b))
    assert f"{host_a} <- key#" in plan.stdout and f"{host_b} <- key#" in plan.stdout
    assert "$REGION_A_KEY" in plan.stdout and "$REGION_B_KEY" in plan.stdout
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 120 and all(r["status"] == "ok" for r in rows.values())
    assert {r.headers["authorization"] for r in on_a} == {f"Bearer {KEY_A}"}
    assert {r.headers["authorization"] for r in on_b} == {f"Bearer {KEY_B}"}
    # 300 a minute on a (5 a second, evenly spaced), none on b: b takes most of the records,
    # and a never more than its pace allows over the time it was used.
    assert len(on_a) >= 1 and len(on_b) > len(on_a)
    span = max(r.received_at for r in on_a) - min(r.received_at for r in on_a)
    assert len(on_a) <= 2 + span * 5.0 * 1.05, (len(on_a), span)
    for text in (result.stdout, result.stderr, plan.stdout, plan.stderr):
        assert KEY_A not in text and KEY_B not in text
    for written in tmp_path.rglob("*"):  # the rows, the manifest, the run log, the checkpoint
        if written.is_file():
            data = written.read_bytes()
            assert KEY_A.encode() not in data and KEY_B.encode() not in data, written


def test_a_services_key_on_an_endpoint_of_another_host_is_refused(tmp_path: Path) -> None:
    with FakeOpenAI() as a, FakeOpenAI() as b:
        provider = regions(a, b, 600)
        provider["endpoints"][1]["api_keys"] = ["${OPENAI_API_KEY}"]  # type: ignore[index]
        recipe = setup_run(tmp_path, provider, 5)
        env = {"REGION_A_KEY": KEY_A, "OPENAI_API_KEY": KEY_B}
        refused = run_cli("run", str(recipe), cwd=tmp_path, env=env)
        assert a.count() == 0 and b.count() == 0
    assert refused.returncode == 2, refused.stderr
    assert "provider.endpoints[1].base_url" in refused.stderr
    assert "OPENAI_API_KEY belongs to api.openai.com" in refused.stderr
    assert KEY_A not in refused.stderr and KEY_B not in refused.stderr


def test_an_endpoint_without_keys_of_its_own_sends_the_providers_only(tmp_path: Path) -> None:
    # b has no api_keys: it gets the provider's, never a's (a's key is not routed to b, and a
    # service's key on a is not refused for b's host).
    with FakeOpenAI(api_keys={KEY_A}) as a, FakeOpenAI(api_keys={"k-local-123456"}) as b:
        provider = regions(a, b, 600)
        provider["api_keys"] = ["k-local-123456"]
        del provider["endpoints"][1]["api_keys"]  # type: ignore[index]
        recipe = setup_run(tmp_path, provider, 30, run={"concurrency": 4})
        env = {"REGION_A_KEY": KEY_A}
        plan = read_cli("plan", str(recipe), cwd=tmp_path, env=env)
        result = run_cli("run", str(recipe), cwd=tmp_path, env=env)
        on_b = list(b.requests)
    assert plan.returncode == 0 and result.returncode == EXIT_OK, plan.stderr + result.stderr
    host_b = b.url.split("//")[1].split("/")[0]
    lines_b = [line for line in plan.stdout.splitlines() if host_b in line]
    assert lines_b and not any("REGION_A_KEY" in line for line in lines_b), plan.stdout
    assert {r.headers["authorization"] for r in on_b} == {"Bearer k-local-123456"}


def test_base_urls_and_endpoints_together_are_refused(tmp_path: Path) -> None:
    with FakeOpenAI() as a, FakeOpenAI() as b:
        provider = regions(a, b, 600)
        provider["base_urls"] = [a.url]
        recipe = setup_run(tmp_path, provider, 5)
        env = {"REGION_A_KEY": KEY_A, "REGION_B_KEY": KEY_B}
        result = read_cli("validate", str(recipe), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "give provider.base_urls or provider.endpoints, not both" in result.stderr
    with FakeOpenAI() as a:
        twice = regions(a, a, 600)
        recipe = setup_run(tmp_path, twice, 5)
        result = read_cli("validate", str(recipe), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "provider.endpoints lists a base_url twice" in result.stderr
