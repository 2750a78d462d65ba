"""Rate limits: the pace and key pool on their own, then the real CLI against a fake server that
enforces a limit itself (asserted by counts on the server: 429s and requests per window)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from llmrun.limits import KeyPool, Pace, _duration
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.testing.limits import ServerLimit

from .conftest import read_jsonl, run_cli
from .test_run import by_id, openai, setup_run

EXIT_OK = 0


def test_reset_durations_in_every_form_providers_send() -> None:
    assert _duration("1.5") == 1.5
    assert _duration("6m0s") == 360.0
    assert _duration("20ms") == pytest.approx(0.02)
    assert _duration("1h2m3.5s") == pytest.approx(3723.5)
    assert _duration("soon") is None
    assert _duration(None) is None


def test_a_pace_spaces_starts_and_takes_back_what_was_not_used() -> None:
    pace = Pace(600)  # one every 0.1 s
    assert pace.ready_at(10.0) == 10.0
    pace.take(10.0, 1)
    assert pace.ready_at(10.0) == pytest.approx(10.1)
    pace.take(10.1, 3)
    assert pace.ready_at(10.0) == pytest.approx(10.4)
    pace.give_back(2)  # 3 reserved, 1 used
    assert pace.ready_at(10.0) == pytest.approx(10.2)
    free = Pace(None)
    free.take(5.0, 1000)
    assert free.ready_at(5.0) == 5.0


@pytest.mark.anyio
async def test_requests_go_to_the_key_with_most_headroom() -> None:
    pool = KeyPool(("k1", "k2", "k3"), requests_per_minute=60)  # one a second per key
    for state in pool.states:
        state.trusted = True
    with anyio.fail_after(5):  # three keys, three immediate starts: no waiting
        leases = [await pool.acquire(0) for _ in range(3)]
    assert sorted(lease.key or "" for lease in leases) == ["k1", "k2", "k3"]
    leases[1].state.retired = "401"
    assert {s.key for s in pool.states if s.retired is None} == {"k1", "k3"}


@pytest.mark.anyio
async def test_an_unverified_key_sends_one_request_at_a_time() -> None:
    pool = KeyPool(("k1",))
    first = await pool.acquire(0)
    assert first.probe
    got: list[str | None] = []

    async def second() -> None:
        lease = await pool.acquire(0)
        got.append(lease.key)
        pool.release(lease, trusted=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.sleep(0.05)
        assert got == []  # waits for the probe's answer
        pool.release(first, trusted=True)
    assert got == ["k1"]


def windows(times: list[float], width: float) -> int:
    """The most events in any window of ``width`` seconds."""
    times = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def test_a_request_limit_equal_to_the_servers_gets_no_429(tmp_path: Path) -> None:
    limit = ServerLimit(requests_per_minute=2400, burst_s=0.5, latency_s=0.02)  # 40/s
    with FakeOpenAI(fault=limit.check) as server:
        recipe = setup_run(
            tmp_path, openai(server), 160, run={"concurrency": 16, "requests_per_minute": 2400}
        )
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert limit.limited == 0
    assert server.count() == 160
    arrivals = [t for t, _ in limit.admitted]
    # Evenly spaced: no second holds more than 40 starts (one more for where the window falls,
    # and the server's half-second burst allowance for scheduling jitter).
    assert windows(arrivals, 1.0) <= 41 + 20
    assert windows(arrivals, 0.25) <= 11 + 20
    assert len(by_id(read_jsonl(tmp_path / "out.jsonl"))) == 160


def test_a_token_limit_is_honoured_with_estimates_corrected_by_usage(tmp_path: Path) -> None:
    tpm = 24_000  # each request uses 12 tokens on this server: 2,000 requests a minute
    limit = ServerLimit(tokens_per_minute=tpm, burst_s=0.5, latency_s=0.02)
    with FakeOpenAI(fault=limit.check) as server:
        recipe = setup_run(
            tmp_path,
            openai(server),
            120,
            generation={"max_tokens": 8},
            run={"concurrency": 16, "tokens_per_minute": tpm},
        )
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert limit.limited == 0
    assert {tokens for _, tokens in limit.admitted} == {12}
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert sum(r["response"]["usage"]["input_tokens"] for r in rows.values()) == 120 * 7
    assert server.count() == 120


def test_adaptive_mode_reads_announced_limits(tmp_path: Path) -> None:
    # No limit in the recipe: the server's x-ratelimit-limit-requests sets the pace after the
    # first answer, so not one request is refused.
    limit = ServerLimit(requests_per_minute=3000, burst_s=0.2, latency_s=0.02)
    with FakeOpenAI(fault=limit.check) as server:
        recipe = setup_run(tmp_path, openai(server), 120, run={"concurrency": 32})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        assert server.count() == 120
    assert result.returncode == EXIT_OK, result.stderr
    assert limit.limited == 0


def test_adaptive_mode_finds_an_unannounced_limit(tmp_path: Path) -> None:
    # Bare 429s, no headers: the pace drops to what was succeeding and the run completes with
    # few refusals (a fixed pace would have kept hitting the limit: see the benchmark).
    limit = ServerLimit(requests_per_minute=1800, burst_s=0.5, latency_s=0.02, announce=False)
    with FakeOpenAI(fault=limit.check) as server:
        recipe = setup_run(
            tmp_path, openai(server), 100, run={"concurrency": 32, "max_retries": 20}
        )
        result = run_cli("run", str(recipe), cwd=tmp_path)
        assert server.count() == 100 + limit.limited
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 100 and all(r["status"] == "ok" for r in rows.values())
    assert limit.limited < 50, limit.limited
