"""Retries and failure handling against a fault-injecting server on 127.0.0.1: the real CLI,
server-side counts and timestamps."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from llmrun.eventloop import Loop, run_sync
from llmrun.run.limits import KeyPool, loop_clock
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.testing.limits import FAULT_KINDS, fault_mix
from llmrun.wire.ratelimit import MAX_SERVER_WAIT_S, reset_seconds
from llmrun.wire.retry import backoff_s, retry_after_s, sleep_at_least

from .conftest import make_records, read_jsonl, run_cli
from .test_run import by_id, calls_per_id, fingerprint_of, openai, record_id_of, setup_run

EXIT_OK, EXIT_ABORTED = 0, 3


@pytest.mark.slow
def test_every_record_ends_ok_under_a_15_percent_fault_mix(tmp_path: Path) -> None:
    fault = fault_mix(0.15, seed=7, stall_s=2.0)
    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(
            tmp_path,
            openai(server),
            300,
            # Random bare 429s are what adaptive mode slows down for; this test is about
            # retries, so the pace stays fixed.
            run={"concurrency": 32, "max_retries": 12, "timeout_s": 0.5, "adaptive": False},
        )
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert sorted(rows) == [r["id"] for r in make_records(300)]
    assert all(r["status"] == "ok" for r in rows.values())
    chosen: dict[str, int] = fault.chosen  # type: ignore[attr-defined]
    assert set(chosen) == set(FAULT_KINDS), chosen  # every kind of fault happened
    faults = sum(chosen.values())
    assert server.count() == 300 + faults  # each fault cost exactly one more request
    assert sum(r["attempts"] for r in rows.values()) == 300 + faults
    summary = json.loads(result.stdout)
    assert summary["retries"] == faults
    retried = summary["retries_by_code"]
    assert retried["rate_limit"] == sum(chosen[k] for k in FAULT_KINDS if k.startswith("429"))
    assert retried["timeout"] == chosen["stall"]
    assert retried["bad_response"] == chosen["non_json"] + chosen["truncated"]
    assert "retries" in result.stderr and "rate_limit" in result.stderr  # progress/summary


def test_a_record_backing_off_leaves_its_slot_to_a_new_record(tmp_path: Path) -> None:
    # r0 is refused once for 2 s; the server answers the others after 0.3 s. With
    # run.concurrency 4, four other records are in flight while r0 waits, never more.
    latency = 0.3
    refused: list[str] = []
    lock = threading.Lock()

    def fault(request: RecordedRequest) -> Fault | None:
        with lock:
            if record_id_of(request) == "r00000" and not refused:
                refused.append("r00000")
                return Fault(429, {"retry-after": "2"})
        return None

    with FakeOpenAI(fault=fault, latency_s=latency) as server:
        recipe = setup_run(tmp_path, openai(server), 13, run={"concurrency": 4, "adaptive": False})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        requests = list(server.requests)
    assert result.returncode == EXIT_OK, result.stderr
    retried_at = [r.received_at for r in requests if record_id_of(r) == "r00000"][1]
    others = sorted(r.received_at for r in requests if record_id_of(r) != "r00000")
    assert len(others) == 12 and others[-1] < retried_at  # all sent while r0 waited

    def in_flight(at: float) -> int:  # sent less than the server's latency before `at`
        return sum(1 for sent in others if at - latency * 0.8 < sent <= at)

    assert max(in_flight(at) for at in others) == 4


@pytest.mark.slow
def test_no_request_arrives_before_its_retry_after(tmp_path: Path) -> None:
    asked: dict[str, tuple[float, float]] = {}  # id -> (sent at, wait asked)
    lock = threading.Lock()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = record_id_of(request)
        assert rid is not None
        with lock:
            if rid in asked or int(rid[1:]) % 3:
                return None
            if int(rid[1:]) % 2:
                asked[rid] = (request.received_at, 0.6)
                return Fault(429, {"retry-after": "0.6"})
            asked[rid] = (request.received_at, 0.35)
            return Fault(429, {"retry-after-ms": "350"})

    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(tmp_path, openai(server), 30, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        requests = list(server.requests)
    assert result.returncode == EXIT_OK, result.stderr
    assert len(asked) == 10
    for rid, (sent, wait) in asked.items():
        later = [r.received_at for r in requests if record_id_of(r) == rid and r.received_at > sent]
        assert len(later) == 1, rid
        assert later[0] - sent >= wait, f"{rid} came back {later[0] - sent:.3f} s after a 429"
    # A third of the requests refused, never most of those in flight: the Retry-After delays
    # the refused request, not the key (others were sent during the first one's wait).
    first_rid = min(asked, key=lambda r: asked[r][0])
    sent, wait = asked[first_rid]
    assert [r for r in requests if sent < r.received_at < sent + wait]
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert all(rows[rid]["attempts"] == 2 for rid in asked)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_wait_a_server_asked_for_never_ends_early(loop: Loop) -> None:
    # uvloop's timers tick in whole milliseconds of a truncated clock: a 0.6 s Retry-After
    # brought the retry back 0.59988 s after the 429 (CI), for the request's own wait and for a
    # held key alike. It also rounds a wait to whole milliseconds: 12.4 ms is 12. Measured
    # by time.monotonic, the clock the server's timestamps use.
    wait = 0.0124

    async def shortest(waiter: Callable[[], Awaitable[object]]) -> float:
        best = float("inf")
        for _ in range(30):
            # Start anywhere within a tick, as a reply read off a socket does: a timer's wake
            # comes just after a tick, so a busy moment puts the start within one.
            await anyio.lowlevel.checkpoint()
            busy = time.monotonic() + random.random() * 0.001
            while time.monotonic() < busy:
                pass
            started = time.monotonic()
            await waiter()
            best = min(best, time.monotonic() - started)
        return best

    async def main() -> tuple[float, float]:
        own = await shortest(lambda: sleep_at_least(wait))
        pool = KeyPool(("k1",), clock=loop_clock())
        pool.states[0].trusted = True

        async def held() -> None:
            state = pool.states[0]
            state.pause(pool_now(), wait)
            pool.release(await pool.acquire(0), trusted=True)

        pool_now = loop_clock()
        return own, await shortest(held)

    own, key = run_sync(main, loop)
    assert own >= wait and key >= wait, (own, key)


def test_a_retry_after_is_the_wait_itself_at_every_attempt() -> None:
    # Exponential backoff on top of it made a record refused a third or fourth time wait
    # up to 2 or 4 s for a 1 s Retry-After, and a run waits for its unluckiest record.
    random.seed(3)
    for attempt in range(1, 11):
        assert {backoff_s(attempt, 1.0) for _ in range(200)} == {1.0}
        assert backoff_s(attempt, 0.35) == 0.35
    # Without one: full jitter, within the exponential bound.
    draws = [backoff_s(4, None) for _ in range(500)]
    assert min(draws) >= 0.0 and max(draws) <= 4.0 and max(draws) > 2.0


def test_a_hostile_wait_from_a_server_is_bounded() -> None:
    # "inf", 1e12 or a date next century held a record (or, as a reset, a whole key) for
    # ever: every wait a server asks for is at most MAX_SERVER_WAIT_S; no number, no wait.
    cap = MAX_SERVER_WAIT_S
    for headers in (
        {"retry-after": "inf"},
        {"retry-after": "1e12"},
        {"retry-after-ms": "1e15"},
        {"retry-after": "Fri, 31 Dec 2999 23:59:59 GMT"},
    ):
        assert retry_after_s(headers) == cap, headers
        assert backoff_s(3, retry_after_s(headers)) == cap
    assert retry_after_s({"retry-after": "nan"}) is None
    assert retry_after_s({"retry-after": "-5"}) == 0.0
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert reset_seconds("inf") == cap and reset_seconds("99999h") == cap
    assert reset_seconds("nan") is None and reset_seconds("6m0s") == 120.0
    assert reset_seconds("20ms") == 0.02


def test_retry_after_holds_the_key_when_most_requests_in_flight_are_refused(
    tmp_path: Path,
) -> None:
    refused: list[float] = []
    lock = threading.Lock()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = record_id_of(request)
        with lock:
            # After the first answer, every request for a while: the key's budget is spent.
            if rid != "r00000" and len(refused) < 8:
                refused.append(request.received_at)
                return Fault(429, {"retry-after": "0.8"})
        return None

    with FakeOpenAI(fault=fault, latency_s=0.01) as server:
        recipe = setup_run(tmp_path, openai(server), 40, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        requests = list(server.requests)
    assert result.returncode == EXIT_OK, result.stderr
    assert len(refused) == 8
    # Once most of the requests in flight were refused, the key waited as asked: nothing was
    # sent from shortly after the last refusal until its Retry-After had passed.
    last = max(refused)
    held = [r for r in requests if last + 0.1 < r.received_at < last + 0.8]
    assert not held, [record_id_of(r) for r in held]
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows.values())
    log = (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8")
    assert "paused 0.8 s (Retry-After)" in log  # the report's pace per key shows the pause


def test_a_lone_429_with_retry_after_is_logged_as_no_pause_of_the_key(tmp_path: Path) -> None:
    # The run log (and the report's pace per key drawn from it) said "paused 1 s" for every
    # Retry-After, though only a key shown spent is held: a lone 429 delays its own request.
    def fault(request: RecordedRequest) -> Fault | None:
        if record_id_of(request) == "r00005" and not fault.done:  # type: ignore[attr-defined]
            fault.done = True  # type: ignore[attr-defined]
            return Fault(429, {"retry-after": "1"})
        return None

    fault.done = False  # type: ignore[attr-defined]
    with FakeOpenAI(fault=fault, latency_s=0.01) as server:
        recipe = setup_run(tmp_path, openai(server), 40, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert by_id(read_jsonl(tmp_path / "out.jsonl"))["r00005"]["attempts"] == 2
    log = (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8")
    assert "paused" not in log, log


def test_a_stall_past_the_read_timeout_is_retried(tmp_path: Path) -> None:
    stalled: set[str] = set()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = record_id_of(request)
        if rid in ("r00002", "r00005") and rid not in stalled:
            stalled.add(rid)
            return Fault(200, delay_s=5.0)
        return None

    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(tmp_path, openai(server), 8, run={"timeout_s": 0.3})
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert rows["r00002"]["attempts"] == rows["r00005"]["attempts"] == 2
    assert calls_per_id(server)["r00002"] == 2
    assert json.loads(result.stdout)["retries_by_code"] == {"timeout": 2}


def test_a_dead_key_in_a_pool_of_three_is_retired_and_the_run_completes(tmp_path: Path) -> None:
    good1, dead, good2 = "sk-good-" + "1" * 20, "sk-dead-" + "2" * 20, "sk-good-" + "3" * 20
    with FakeOpenAI(api_keys={good1, good2}, latency_s=0.01) as server:
        provider = openai(server, api_keys=[good1, dead, good2])
        recipe = setup_run(tmp_path, provider, 60, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
        used = Counter(r.headers["authorization"] for r in server.requests)
    assert result.returncode == EXIT_OK, result.stderr
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 60
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in rows.values())
    assert used[f"Bearer {dead}"] == 1  # its first answer retired it
    assert used[f"Bearer {good1}"] > 0 and used[f"Bearer {good2}"] > 0
    assert used.total() == 61
    assert f"retired {fingerprint_of(dead)}" in result.stderr
    # One warning (the run's first lines name every key's endpoint, the dead one included).
    warnings = [ln for ln in result.stderr.splitlines() if not ln.startswith("endpoint ")]
    assert "\n".join(warnings).count(fingerprint_of(dead)) == 1
    for key in (good1, dead, good2):
        assert key not in result.stderr
        assert key not in (tmp_path / "out.jsonl").read_text()


def test_every_key_rejected_stops_after_one_round_trip_each(tmp_path: Path) -> None:
    keys = ["sk-bad-" + c * 20 for c in "ab"]
    with FakeOpenAI(api_keys={"sk-right"}) as server:
        recipe = setup_run(tmp_path, openai(server, api_keys=keys), 50, run={"concurrency": 16})
        started = time.monotonic()
        result = run_cli("run", str(recipe), cwd=tmp_path)
        assert time.monotonic() - started < 60  # a hang guard, not a speed test
        assert server.count() == 2
    assert result.returncode == EXIT_ABORTED, result.stderr
    assert "every API key was rejected" in result.stderr
    assert all(fingerprint_of(k) in result.stderr for k in keys)
    assert read_jsonl(tmp_path / "out.jsonl") == []


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections, reads what comes, and never
    answers; it counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self.held.append(conn)  # kept open, never written to

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_a_server_that_never_answers_stops_the_run_naming_it(tmp_path: Path) -> None:
    with SilentServer() as silent:
        provider = {"name": "openai", "base_url": f"http://127.0.0.1:{silent.port}/v1"}
        recipe = setup_run(
            tmp_path,
            {**provider, "model": "gpt-test"},
            20,
            run={"concurrency": 8, "timeout_s": 0.4, "max_retries": 5},
        )
        result = run_cli("run", str(recipe), cwd=tmp_path, timeout=60)
        connections = silent.connections
    assert result.returncode == EXIT_ABORTED, result.stderr
    assert f"127.0.0.1:{silent.port}" in result.stderr
    assert "never answers" in result.stderr
    # Nothing ever answered: one request at a time, and the run stopped once 2 x timeout_s
    # had passed, after the first request and one more (not 20 records x 6 attempts).
    assert 1 <= connections <= 2, connections
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_a_pool_of_endpoints_that_never_answer_stops_the_run_naming_each(
    tmp_path: Path,
) -> None:
    with SilentServer() as a, SilentServer() as b:
        urls = [f"http://127.0.0.1:{s.port}/v1" for s in (a, b)]
        with_password = [u.replace("http://", "http://team:hunter2-Secret@") for u in urls]
        recipe = setup_run(
            tmp_path,
            {"name": "openai", "model": "gpt-test", "base_urls": with_password},
            20,
            run={"concurrency": 8, "timeout_s": 0.4},
        )
        result = run_cli("run", str(recipe), cwd=tmp_path, timeout=60)
        connections = a.connections, b.connections
    assert result.returncode == EXIT_ABORTED, result.stderr
    message = result.stderr.splitlines()[-2]  # the error, then the hint to run again
    assert f"any of the 2 endpoints ({urls[0]}, {urls[1]})" in message, message
    assert "provider.base_urls" in message
    assert "hunter2-Secret" not in result.stderr and "team" not in message
    # Each endpoint got its probe, one request at a time, and nothing more once 2 x
    # timeout_s had passed without an answer.
    assert all(1 <= n <= 2 for n in connections), connections
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_a_server_that_stops_answering_mid_run_is_retried_then_reported(tmp_path: Path) -> None:
    answered = 0
    lock = threading.Lock()

    def fault(request: RecordedRequest) -> Fault | None:
        nonlocal answered
        with lock:
            answered += 1
            if answered <= 10:
                return None
        return Fault(200, delay_s=30.0)  # silent from the eleventh request on

    with FakeOpenAI(fault=fault) as server:
        recipe = setup_run(
            tmp_path,
            openai(server),
            20,
            run={"concurrency": 4, "timeout_s": 0.3, "max_retries": 1, "adaptive": False},
        )
        result = run_cli("run", str(recipe), "--json", cwd=tmp_path, timeout=60)
    # It had answered: the silence is retried per record, then reported as error rows.
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 20
    failed = [r for r in rows.values() if r["status"] == "error"]
    assert len(failed) == 10
    assert all(r["error"]["type"] == "timeout" and r["attempts"] == 2 for r in failed)
    assert result.returncode not in (0, EXIT_ABORTED), result.stderr
