"""Crash and resume with real signals: the real `llmrun run` in a subprocess, killed (SIGKILL) or
interrupted (SIGINT, SIGTERM) mid-run, then run again. The fake server lives in this process,
so it counts every call across runs: nothing finished is called again, nothing is lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import basic_recipe, llmrun_command, make_records, write_jsonl, write_recipe
from .test_run import record_id_of

EXIT_OK, EXIT_INTERRUPTED = 0, 130
UPPER_BOUND_S = 60.0  # only to turn a hang into a failure; never a test of speed


class Run:
    """One `llmrun run` process; its stderr goes to a file the test can read while it runs."""

    def __init__(self, recipe: Path) -> None:
        self.log = recipe.parent / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*llmrun_command(), "run", str(recipe), "--quiet"],
                cwd=recipe.parent,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def finish(self) -> tuple[int, str]:
        """Wait for the end: exit code and stderr."""
        return self.process.wait(timeout=UPPER_BOUND_S), self.stderr()

    def wait_until(self, condition: Callable[[], bool]) -> None:
        """Poll until ``condition()``; fail if the run ends first."""
        deadline = time.monotonic() + UPPER_BOUND_S
        while not condition():
            code = self.process.poll()
            assert code is None, f"the run ended ({code}) too soon: {self.stderr()}"
            assert time.monotonic() < deadline, "gave up waiting"
            time.sleep(0.005)


class Output:
    """The output file as a reader sees it while a run appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 16), b""))
        except FileNotFoundError:
            return 0

    def ids(self) -> list[str]:
        """Ids of the whole rows (a torn last line, if any, is not a row)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        return [json.loads(line)["id"] for line in whole.splitlines()]

    def rows(self) -> list[dict[str, Any]]:
        """Every line, each of which must be a whole row."""
        data = self.path.read_bytes()
        assert data.endswith(b"\n"), "the output ends in a torn line"
        return [json.loads(line) for line in data.splitlines()]


def settle(server: FakeOpenAI) -> int:
    """Requests the server has received once bytes already sent by a dead client are read."""
    count = -1
    while count != len(server.requests):
        count = len(server.requests)
        time.sleep(0.05)
    return count


def make_run(folder: Path, server: FakeOpenAI, n: int, **run: Any) -> tuple[Path, Output]:
    write_jsonl(folder / "data.jsonl", make_records(n))
    provider = {"name": "openai", "base_url": server.url, "model": "m"}
    recipe = write_recipe(folder, basic_recipe(provider, run={"max_retries": 2, **run}))
    return recipe, Output(folder / "out.jsonl")


def requested(server: FakeOpenAI, start: int = 0, stop: int | None = None) -> list[str]:
    ids = [record_id_of(r) for r in server.requests[start:stop]]
    assert None not in ids
    return [i for i in ids if i is not None]


@pytest.mark.slow
def test_sigkill_at_random_instants_then_resume(tmp_path: Path) -> None:
    n, kills = 5000, 10
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    with FakeOpenAI() as server:  # no latency, high concurrency: kills land mid-stream fast
        recipe, out = make_run(tmp_path, server, n, concurrency=64)
        marks = [0]  # server request count after each kill
        done_at_kill: list[set[str]] = []
        for k in range(kills):
            run = Run(recipe)
            if k == 0:
                # Anywhere from start-up (imports, lock, opening the output) to the first calls.
                time.sleep(rng.uniform(0.0, 0.8))
            else:
                # Never within 500 rows of the end (100 ms at this server's pace, 20 polls): a
                # quick first kill and high draws summed past n, and the run ended on its own
                # (seen once on a quiet machine). Past that, the run is killed as it starts.
                target = min(out.lines() + rng.randint(1, 400), n - 500)
                run.wait_until(lambda: out.lines() >= target)  # noqa: B023
            run.process.kill()
            code, stderr = run.finish()
            assert code == -signal.SIGKILL, f"seed {seed}: ended on its own: {stderr}"
            marks.append(settle(server))
            done_at_kill.append(set(out.ids()))
        assert len(done_at_kill[-1]) < n, f"seed {seed}: the kills came too late to test much"

        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
        marks.append(settle(server))

    rows = out.rows()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n, f"seed {seed}: lost or duplicated rows"
    assert set(ids) == {r["id"] for r in make_records(n)}
    assert all(r["status"] == "ok" for r in rows)

    calls = Counter(requested(server))
    assert set(calls) == set(ids)
    allowed = Counter[str]()
    for k, done in enumerate(done_at_kill):
        # A row in the output when the process died is never asked for again...
        again = done.intersection(requested(server, marks[k + 1]))
        assert not again, f"seed {seed}: finished before kill {k + 1}, called again: {again}"
        # ...and what was in flight then may be called once more by a later run.
        allowed.update(set(requested(server, marks[k], marks[k + 1])) - done)
    over = {i: c for i, c in calls.items() if c > 1 + allowed[i]}
    assert not over, f"seed {seed}: more calls than kills in flight: {over}"


def test_sigint_drains_calls_in_flight_then_resume(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.3) as server:
        recipe, out = make_run(tmp_path, server, 200, concurrency=16)
        run = Run(recipe)
        run.wait_until(lambda: out.lines() >= 20)
        run.process.send_signal(signal.SIGINT)
        code, stderr = run.finish()
        assert code == EXIT_INTERRUPTED, stderr
        assert "SIGINT: finishing" in stderr
        assert f"run `llmrun run {recipe}` again to continue" in stderr

        # Every call that had started was let finish and written, and no new call began.
        first = out.rows()
        assert sorted(r["id"] for r in first) == sorted(requested(server))
        assert 20 <= len(first) < 200

        server.latency_s = 0.0
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
    rows = out.rows()
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(200)]
    assert Counter(requested(server)) == Counter({r["id"]: 1 for r in rows})


def test_sigterm_is_a_first_ctrl_c(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.3) as server:
        recipe, out = make_run(tmp_path, server, 100, concurrency=8)
        run = Run(recipe)
        run.wait_until(lambda: server.count() > 1)  # calls in flight
        run.process.send_signal(signal.SIGTERM)
        code, stderr = run.finish()
        assert code == EXIT_INTERRUPTED, stderr
        assert "SIGTERM: finishing" in stderr
        assert "again to continue" in stderr
        first = out.rows()
        assert len(first) > 1, "the calls in flight were not drained"
        assert sorted(r["id"] for r in first) == sorted(requested(server))

        server.latency_s = 0.0
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
    rows = out.rows()
    assert len(rows) == len({r["id"] for r in rows}) == 100
    assert Counter(requested(server)) == Counter({r["id"]: 1 for r in rows})


def test_second_sigint_stops_at_once_then_resume(tmp_path: Path) -> None:
    # After the first answer, answers take far longer than the test waits (and than drain_s):
    # only cancelling the calls in flight ends the run.
    slow = True

    def fault(request: RecordedRequest) -> Fault | None:
        return Fault(200, delay_s=120) if slow and record_id_of(request) != "r00000" else None

    with FakeOpenAI(fault=fault) as server:
        recipe, out = make_run(tmp_path, server, 40, concurrency=8, drain_s=60)
        run = Run(recipe)
        run.wait_until(lambda: server.count() >= 9 and out.lines() == 1)
        run.process.send_signal(signal.SIGINT)
        run.wait_until(lambda: "SIGINT: finishing" in run.stderr())
        run.process.send_signal(signal.SIGINT)
        code, stderr = run.finish()
        assert code == EXIT_INTERRUPTED, stderr
        assert "stopping now" in stderr
        assert [r["id"] for r in out.rows()] == ["r00000"]  # the others were not waited for
        cancelled = set(requested(server)) - {"r00000"}
        assert len(cancelled) == 8

        slow = False
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
    rows = out.rows()
    assert len(rows) == len({r["id"] for r in rows}) == 40
    calls = Counter(requested(server))
    assert calls == Counter({r["id"]: 2 if r["id"] in cancelled else 1 for r in rows})


def test_sigint_before_the_first_answer_starts_no_new_call(tmp_path: Path) -> None:
    # The first call goes alone (until a key has answered once, one call at a time uses it);
    # the others wait for its answer. Interrupted meanwhile, they must not start at all.
    with FakeOpenAI(latency_s=2.0) as server:
        recipe, out = make_run(tmp_path, server, 50, concurrency=8)
        run = Run(recipe)
        run.wait_until(lambda: server.count() >= 1)
        run.process.send_signal(signal.SIGINT)
        code, stderr = run.finish()
        assert code == EXIT_INTERRUPTED, stderr
        assert server.count() == 1
        assert len(out.rows()) == 1  # the call in flight was let finish
        server.latency_s = 0.0
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
    rows = out.rows()
    assert len(rows) == len({r["id"] for r in rows}) == 50
    assert Counter(requested(server)) == Counter({r["id"]: 1 for r in rows})
