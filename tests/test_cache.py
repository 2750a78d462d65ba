"""The call cache through the real `llmrun` command against the fake OpenAI server, which
counts every request it receives: a reply found in the cache is never sent."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import (
    basic_recipe,
    make_records,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_recipe,
)
from .test_resume import Output, Run
from .test_run import by_id, record_id_of

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
KEY = "sk-live-Cache7e5tSecretKey0123456789"
PRICES = {"gpt-test": {"input": 1.0, "output": 2.0}}
# What a cached row may differ in from the row that paid for the reply.
PER_CALL = ("attempts", "latency_s", "cost_usd", "cached", "key", "started_at", "finished_at")


def recipe_for(
    folder: Path,
    server: FakeOpenAI,
    n: int = 20,
    *,
    name: str = "recipe.yaml",
    output: str = "out.jsonl",
    cache: Any = "cache.db",
    generation: dict[str, Any] | None = None,
    raw: bool = False,
    **overrides: Any,
) -> Path:
    if not (folder / "data.jsonl").exists():
        write_jsonl(folder / "data.jsonl", make_records(n))
    provider = {"name": "openai", "base_url": server.url, "model": "gpt-test", "api_keys": [KEY]}
    data = basic_recipe(
        provider,
        generation={"temperature": 0} if generation is None else generation,
        output={"path": output, "raw": raw},
        prices=PRICES,
        **overrides,
    )
    if cache is not None:
        data["cache"] = cache
    return write_recipe(folder, data, name)


def run(recipe: Path, *args: str) -> dict[str, Any]:
    result = run_cli("run", str(recipe), "--json", "--quiet", *args, cwd=recipe.parent)
    assert result.returncode in (EXIT_OK, EXIT_ERRORS), result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["stderr"] = result.stderr
    return summary


def without_per_call(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in PER_CALL}


def test_a_second_run_sends_nothing_and_its_rows_say_cached(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 20, raw=True)
    first = run(recipe)
    assert fake_openai.count() == 20 and first["ok"] == 20 and first["cached"] == 0
    paid = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert all(
        r["cached"] is False and r["attempts"] == 1 and r["cost_usd"] > 0 for r in paid.values()
    )

    second = run(recipe, "--fresh")
    assert fake_openai.count() == 20  # not one more request
    assert second["ok"] == 20 and second["cached"] == 20
    assert second["cost_usd"] == 0 and second["tokens"] == {"input": 0, "output": 0}
    cached = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert cached.keys() == paid.keys()
    for rid, row in cached.items():
        assert row["cached"] is True and row["attempts"] == 0 and row["cost_usd"] == 0
        assert without_per_call(row) == without_per_call(paid[rid])
        assert row["response"]["raw"]["id"] == paid[rid]["response"]["raw"]["id"]


def test_editing_the_prompt_recalls_only_the_records_whose_request_changed(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 20)
    run(recipe)
    assert fake_openai.count() == 20
    changed = {"r00003", "r00011"}
    edited = "id={{ id }} {{ text }}{% if id in ['r00003', 'r00011'] %} (urgent){% endif %}"
    recipe = recipe_for(tmp_path, fake_openai, prompt={"system": "You are terse.", "user": edited})
    summary = run(recipe, "--fresh")
    assert fake_openai.count() == 22
    assert {record_id_of(r) for r in fake_openai.requests[20:]} == changed
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert summary["cached"] == 18
    for rid, row in rows.items():
        assert row["cached"] is (rid not in changed)
        assert row["text"].endswith("(urgent)") is (rid in changed)
    # A generation setting is part of the request too: all 20 go again.
    recipe = recipe_for(
        tmp_path,
        fake_openai,
        prompt={"system": "You are terse.", "user": edited},
        generation={"temperature": 0, "max_tokens": 50},
    )
    run(recipe, "--fresh")
    assert fake_openai.count() == 42


def test_a_copy_of_the_recipe_with_another_output_sends_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe_for(tmp_path, fake_openai, 20)
    run(tmp_path / "recipe.yaml")
    copy = recipe_for(tmp_path, fake_openai, name="team-b.yaml", output="team-b/out.jsonl")
    summary = run(copy)
    assert fake_openai.count() == 20
    assert summary["cached"] == 20
    theirs = by_id(read_jsonl(tmp_path / "team-b/out.jsonl"))
    ours = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert {k: without_per_call(v) for k, v in theirs.items()} == {
        k: without_per_call(v) for k, v in ours.items()
    }


def test_the_command_line_cache_wins_and_no_cache_sends_everything(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 10, cache=None)
    run(recipe, "--cache", "elsewhere/shared.db")
    assert (tmp_path / "elsewhere/shared.db").is_file() and fake_openai.count() == 10
    copy = recipe_for(tmp_path, fake_openai, name="copy.yaml", output="copy.jsonl", cache="own.db")
    assert run(copy, "--cache", "elsewhere/shared.db")["cached"] == 10
    assert fake_openai.count() == 10 and not (tmp_path / "own.db").exists()
    assert run(copy, "--fresh", "--no-cache")["cached"] == 0
    assert fake_openai.count() == 20 and not (tmp_path / "own.db").exists()


def test_two_runs_at_once_on_one_cache_both_finish_and_it_stays_consistent(
    tmp_path: Path,
) -> None:
    n = 300
    with FakeOpenAI(latency_s=0.002) as server:
        a = recipe_for(
            tmp_path, server, n, name="a.yaml", output="a.jsonl", run={"concurrency": 16}
        )
        b = recipe_for(
            tmp_path, server, n, name="b.yaml", output="b.jsonl", run={"concurrency": 16}
        )
        runs = [Run(a), Run(b)]
        for r in runs:
            code, stderr = r.finish()
            assert code == EXIT_OK, stderr
        sent = server.count()
        # Each request is sent once, or twice when both runs missed it at the same moment.
        assert n <= sent <= 2 * n
        for name in ("a.jsonl", "b.jsonl"):
            rows = read_jsonl(tmp_path / name)
            assert len(by_id(rows)) == n and all(r["status"] == "ok" for r in rows)
        db = sqlite3.connect(tmp_path / "cache.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == n
        db.close()
        # Everything is in it: both again from scratch send nothing.
        runs = [Run(a), Run(b)]
        for r in runs:
            r.process.wait(timeout=60)
        assert server.count() == sent


def test_killed_mid_run_the_cache_opens_and_the_rerun_completes(tmp_path: Path) -> None:
    n = 2000
    with FakeOpenAI() as server:
        recipe = recipe_for(tmp_path, server, n, run={"concurrency": 32})
        out = Output(tmp_path / "out.jsonl")
        for target in (1, 300, 900):
            r = Run(recipe)
            r.wait_until(lambda: out.lines() >= target)  # noqa: B023
            r.process.send_signal(signal.SIGKILL)
            assert r.process.wait(timeout=60) == -signal.SIGKILL
            db = sqlite3.connect(tmp_path / "cache.db")
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.close()
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
        assert len(by_id(out.rows())) == n
        sent = server.count()
        # The cache holds every reply now: from scratch, nothing is sent.
        summary = run(recipe, "--fresh")
        assert summary["cached"] == n and server.count() == sent
        stats = run_cli("cache", "stats", "cache.db", "--json", cwd=tmp_path)
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["entries"] == n


def test_eviction_keeps_the_file_under_the_bound(tmp_path: Path) -> None:
    bound = 400_000
    big = "word " * 400  # a 2 kB reply: 300 of them are 600 kB
    with FakeOpenAI(reply=lambda body: big) as server:
        recipe = recipe_for(
            tmp_path,
            server,
            300,
            cache={"path": "cache.db", "max_gb": bound / 1e9},
            run={"concurrency": 1},
        )
        run(recipe)
        assert server.count() == 300
        assert (tmp_path / "cache.db").stat().st_size <= bound
        assert not (tmp_path / "cache.db-wal").exists()  # the last run closed it
        stats = run_cli("cache", "stats", "cache.db", "--json", cwd=tmp_path)
        entries = json.loads(stats.stdout)["entries"]
        assert 20 < entries < 300
        # The last replies stored are kept, the first evicted (one worker: stored in order).
        records = make_records(300)
        for part, sent in ((records[-20:], 0), (records[:20], 20)):
            write_jsonl(tmp_path / "data.jsonl", part)
            before = server.count()
            run(recipe, "--fresh")
            assert server.count() - before == sent


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    from llmrun.run.cachedb import CacheDB

    reply = "x" * 4000
    db = CacheDB(tmp_path / "c.db", max_bytes=None)
    keys = [i.to_bytes(32, "big") for i in range(100)]
    for i, key in enumerate(keys):
        db.exchange([], [(key, reply)], now=1000.0 + i)
    assert db.exchange([keys[0]], [], now=5000.0) == {keys[0]: reply}  # used again: now newest
    db.max_bytes = 200_000  # about 45 replies fit under 90% of it
    db.exchange([], [(b"n" * 32, reply)], now=6000.0)
    left = db.exchange([*keys, b"n" * 32], [], now=7000.0)
    db.close()
    assert keys[0] in left and b"n" * 32 in left
    survivors = sorted(int.from_bytes(k, "big") for k in left if k != b"n" * 32)
    # The survivors are the most recently used: a run of the last ones, plus the one used again.
    assert 0 < len(survivors) < 60
    rest = survivors[1:]
    assert rest == list(range(100 - len(rest), 100))
    assert (tmp_path / "c.db").stat().st_size <= 200_000


def test_sampled_requests_are_cached_only_when_the_user_says_so(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 5, generation={"temperature": 0.7})
    first = run(recipe)
    assert "sampled requests" in " ".join(first["warnings"])
    run(recipe, "--fresh")
    assert fake_openai.count() == 10  # sent both times
    assert not sqlite3.connect(tmp_path / "cache.db").execute("SELECT * FROM entries").fetchall()
    # No temperature at all: the server's default (1) samples.
    recipe = recipe_for(tmp_path, fake_openai, generation={})
    run(recipe, "--fresh")
    run(recipe, "--fresh")
    assert fake_openai.count() == 20
    # A seed makes it reproducible: cached.
    recipe = recipe_for(tmp_path, fake_openai, generation={"temperature": 0.7, "seed": 7})
    run(recipe, "--fresh")
    assert run(recipe, "--fresh")["cached"] == 5 and fake_openai.count() == 25
    # Asked for: cached.
    recipe = recipe_for(
        tmp_path,
        fake_openai,
        generation={"temperature": 0.7},
        cache={"path": "cache.db", "sampled": True},
    )
    assert "sampled requests" not in " ".join(run(recipe, "--fresh")["warnings"])
    assert run(recipe, "--fresh")["cached"] == 5 and fake_openai.count() == 30


def test_keys_never_reach_the_cache_file_even_when_the_server_echoes_them(
    tmp_path: Path,
) -> None:
    with FakeOpenAI(
        api_keys=[KEY], reply=lambda body: f"your key is {KEY}, Bearer {KEY}"
    ) as server:
        recipe = recipe_for(tmp_path, server, 10, raw=True)
        run(recipe)
        assert server.count() == 10
        assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)
        run(recipe, "--fresh")
        assert server.count() == 10  # it was cached: the check below looked at stored replies
    files = list(tmp_path.glob("cache.db*"))
    assert files
    for path in files:
        data = path.read_bytes()
        assert KEY.encode() not in data and KEY[8:20].encode() not in data


def test_error_answers_are_never_cached(tmp_path: Path) -> None:
    def fault(request: RecordedRequest) -> Fault | None:
        return Fault(status=400) if record_id_of(request) in ("r00002", "r00005") else None

    with FakeOpenAI(fault=fault) as server:
        recipe = recipe_for(tmp_path, server, 8)
        first = run(recipe)
        assert first["error"] == 2 and server.count() == 8
        second = run(recipe, "--fresh")
        assert second["cached"] == 6 and second["error"] == 2
        assert server.count() == 10  # only the two that failed went again


def test_a_cache_hit_reserves_no_budget(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 10)
    run(recipe)
    # A budget below one call's worst case: nothing could be sent, but nothing needs to be.
    tight = recipe_for(tmp_path, fake_openai, run={"budget_usd": 1e-9})
    result = run_cli("run", str(tight), "--fresh", "--json", "--quiet", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["cached"] == 10 and fake_openai.count() == 10


@pytest.mark.parametrize("content", ["text", "foreign-db"])
def test_a_file_that_is_not_a_cache_is_refused_and_left_alone(
    tmp_path: Path, fake_openai: FakeOpenAI, content: str
) -> None:
    target = tmp_path / "data.db"
    if content == "text":
        target.write_text("not a database at all\n" * 50)
    else:
        db = sqlite3.connect(target)
        db.execute("CREATE TABLE people (name TEXT)")
        db.execute("INSERT INTO people VALUES ('ada')")
        db.commit()
        db.close()
    before = target.read_bytes()
    recipe = recipe_for(tmp_path, fake_openai, 5, cache="data.db")
    result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "data.db" in result.stderr and "cache" in result.stderr
    assert fake_openai.count() == 0
    assert target.read_bytes() == before
    assert not (tmp_path / "out.jsonl").exists() or not read_jsonl(tmp_path / "out.jsonl")


def test_a_recipe_writes_its_cache_only_inside_its_folder(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    folder = tmp_path / "team"
    folder.mkdir()
    recipe = recipe_for(folder, fake_openai, 3, cache="../outside.db")
    refused = run_cli("run", str(recipe), "--quiet", cwd=folder)
    assert refused.returncode == EXIT_USAGE and "outside the recipe's folder" in refused.stderr
    onto_output = recipe_for(folder, fake_openai, name="b.yaml", cache="out.jsonl")
    refused = run_cli("run", str(onto_output), "--quiet", cwd=folder)
    assert refused.returncode == EXIT_USAGE and "of its own" in refused.stderr
    assert fake_openai.count() == 0 and not (tmp_path / "outside.db").exists()
    # Named on the command line by the user: anywhere.
    allowed = run(recipe, "--cache", str(tmp_path / "outside.db"))
    assert allowed["ok"] == 3 and (tmp_path / "outside.db").is_file()


def test_a_cache_path_that_cannot_be_made_is_a_usage_error(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 3, cache="data.jsonl/cache.db")  # under a file
    result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "cannot create the cache" in result.stderr and fake_openai.count() == 0


def test_a_damaged_entry_is_a_miss_not_a_crash(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 4)
    run(recipe)
    db = sqlite3.connect(tmp_path / "cache.db")
    db.execute('UPDATE entries SET reply = \'{"text": 5, "usage": []}\' WHERE id = 1')
    db.execute("UPDATE entries SET reply = 'not json' WHERE id = 2")
    db.commit()
    db.close()
    summary = run(recipe, "--fresh")
    assert summary["ok"] == 4 and summary["cached"] == 2 and fake_openai.count() == 6


def test_cache_stats_and_prune(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    recipe = recipe_for(tmp_path, fake_openai, 30)
    run(recipe)
    stats = run_cli("cache", "stats", "cache.db", "--json", cwd=tmp_path)
    figures = json.loads(stats.stdout)
    assert figures["entries"] == 30 and figures["data_bytes"] > 0
    assert run_cli("cache", "stats", "cache.db", cwd=tmp_path).returncode == 0
    nothing = run_cli("cache", "prune", "cache.db", cwd=tmp_path)
    assert nothing.returncode == EXIT_USAGE and "--max-gb" in nothing.stderr
    pruned = run_cli("cache", "prune", "cache.db", "--older-than", "1", cwd=tmp_path)
    assert pruned.returncode == 0 and "deleted 0 entries" in pruned.stderr
    pruned = run_cli("cache", "prune", "cache.db", "--max-gb", "0.00003", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    left = json.loads(run_cli("cache", "stats", "cache.db", "--json", cwd=tmp_path).stdout)
    assert left["entries"] < 30 and (tmp_path / "cache.db").stat().st_size <= 30_000
    missing = run_cli("cache", "stats", "nope.db", cwd=tmp_path)
    assert missing.returncode == EXIT_USAGE and not (tmp_path / "nope.db").exists()


def test_a_cache_hit_waits_for_no_key_and_no_pace(tmp_path: Path) -> None:
    """In process: the Caller answers a hit without drawing a key (no rate limit consumed)."""
    import anyio

    from llmrun.builtins.openai import OpenAIChat
    from llmrun.recipe.model import CacheSettings, RunSettings
    from llmrun.run.cache import CallCache
    from llmrun.run.calls import Caller
    from llmrun.run.limits import KeyPool
    from llmrun.values import ComponentContext, Prompt
    from llmrun.wire.transport import default_transport

    class CountingPool(KeyPool):
        acquired = 0

        async def acquire(self, tokens: int) -> Any:
            CountingPool.acquired += 1
            return await super().acquire(tokens)

    async def main(server: FakeOpenAI) -> tuple[bool, bool]:
        provider = OpenAIChat(
            {"model": "gpt-test", "base_url": server.url}, ComponentContext(tmp_path, "t")
        )
        settings = RunSettings(8, 0, 10.0, 5.0, 1.0, requests_per_minute=1.0)
        cache = CallCache.open(CacheSettings(tmp_path / "c.db"))
        transport = default_transport(max_connections=4, connect_timeout_s=5.0)
        pool = CountingPool([KEY], requests_per_minute=1.0)
        caller = Caller(
            provider, transport, pool, settings, warn=print, on_retry=print, cache=cache
        )
        prompt = Prompt("r1", [{"role": "user", "content": "hi"}], {"temperature": 0})
        first = await caller.call(prompt)
        # At one request a minute, a second send would wait a minute; a hit does not wait.
        again = [await caller.call(prompt) for _ in range(5)]
        await cache.aclose()
        await transport.aclose()
        return first.cached, all(o.cached and o.attempts == 0 for o in again)

    with FakeOpenAI() as server:
        first_cached, all_hits = anyio.run(main, server)
        assert server.count() == 1
    assert not first_cached and all_hits
    assert CountingPool.acquired == 1


def test_identical_requests_in_flight_at_once_are_sent_once(tmp_path: Path) -> None:
    # 30 records, 3 distinct texts, all in flight together: one request a text reaches the
    # server, the others wait for its reply and take it from the cache.
    with FakeOpenAI(latency_s=0.3) as server:
        records = [{"id": f"r{i:05d}", "text": f"the same text {i % 3}"} for i in range(30)]
        write_jsonl(tmp_path / "data.jsonl", records)
        recipe = recipe_for(
            tmp_path, server, prompt={"user": "{{ text }}"}, run={"concurrency": 32}
        )
        summary = run(recipe)
        assert server.count() == 3
    assert summary["ok"] == 30 and summary["cached"] == 27
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    for rid, row in rows.items():
        assert row["text"] == f"echo: the same text {int(rid[1:]) % 3}"
    assert sum(not r["cached"] for r in rows.values()) == 3
