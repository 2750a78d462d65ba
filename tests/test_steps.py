"""Multi-step recipes (docs/steps.md) through the real `llmrun` command against the fake OpenAI
server, which counts every request by record and step: a finished step is never sent again."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmrun.errors import RecipeError
from llmrun.plugins import load_registry
from llmrun.recipe.load import load_recipe
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import make_records, read_cli, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_resume import Output, Run
from .test_run import by_id

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
KEY = "sk-live-Steps7e5tSecretKey0123456789"
STEP_NAMES = ("draft", "judge", "refine")


def score_of(rid: str) -> int:
    """The judge's grade of a record's draft: low (refine) for about two in five."""
    return int(rid[1:]) % 5 + 1


class Steps:
    """The fake server's replies and counts, by step (the system message) and record."""

    def __init__(self) -> None:
        self.sent: Counter[tuple[str, str]] = Counter()
        self.bodies: dict[tuple[str, str], list[Any]] = {}
        self.lock = threading.Lock()
        self.judge_reply = "Score: {score}"

    @staticmethod
    def which(body: Any) -> tuple[str, str]:
        messages = body.get("messages") or [] if isinstance(body, dict) else []
        step = str(messages[0]["content"]).split()[1].rstrip(":") if messages else "?"
        match = re.search(r"id=(\S+)", str(messages[-1]["content"])) if messages else None
        return step, match.group(1) if match else "?"

    def reply(self, body: Any) -> str:
        step, rid = self.which(body)
        with self.lock:
            self.sent[(step, rid)] += 1
            self.bodies.setdefault((step, rid), []).append(body)
        if step == "draft":
            return f"draft of {rid}"
        if step == "judge":
            return self.judge_reply.format(score=score_of(rid))
        return f"better reply for {rid}"

    def counts(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter(self.sent)


def steps_recipe(
    folder: Path,
    server: FakeOpenAI,
    n: int = 30,
    *,
    judge_system: str = "STEP judge: grade the draft.",
    output: str = "out.jsonl",
    name: str = "recipe.yaml",
    cache: str | None = None,
    **overrides: Any,
) -> Path:
    if not (folder / "data.jsonl").exists():
        write_jsonl(folder / "data.jsonl", make_records(n))
    recipe: dict[str, Any] = {
        "name": "steps",
        "data": {"path": "data.jsonl", "id": "id"},
        "provider": {
            "name": "openai",
            "base_url": server.url,
            "model": "gpt-test",
            "api_keys": [KEY],
        },
        "generation": {"temperature": 0},
        "prices": {
            "gpt-test": {"input": 1.0, "output": 2.0},
            "gpt-judge": {"input": 5, "output": 5},
        },
        "steps": [
            {
                "name": "draft",
                "prompt": {"system": "STEP draft: write.", "user": "id={{ id }} {{ text }}"},
            },
            {
                "name": "judge",
                "provider": {"model": "gpt-judge"},
                "prompt": {
                    "system": judge_system,
                    "user": "Draft: {{ steps.draft.text }}\nid={{ id }}",
                },
                "postprocess": [{"regex": {"pattern": "Score: (?P<score>[1-5])"}}],
            },
            {
                "name": "refine",
                "when": "steps.judge.fields.score | int < 3",
                "prompt": {
                    "system": "STEP refine: improve.",
                    "user": "{{ steps.draft.text }} / {{ steps.judge.text }}\nid={{ id }}",
                },
            },
        ],
        "run": {"concurrency": 8, "max_retries": 1},
        "output": {"path": output},
    }
    if cache is not None:
        recipe["cache"] = cache
    recipe.update(overrides)
    return write_recipe(folder, recipe, name)


def run(recipe: Path, *args: str, expect: int = EXIT_OK) -> dict[str, Any]:
    result = run_cli("run", str(recipe), "--json", "--quiet", *args, cwd=recipe.parent)
    assert result.returncode == expect, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def check_row(row: dict[str, Any]) -> None:
    """A finished record of steps_recipe: every step in its place, the row the last one's."""
    rid, steps = row["id"], row["steps"]
    assert row["status"] == "ok", row
    assert steps["draft"]["text"] == f"draft of {rid}"
    assert steps["judge"]["fields"] == {"score": str(score_of(rid))}
    if score_of(rid) < 3:
        assert steps["refine"]["status"] == "ok"
        assert row["text"] == steps["refine"]["text"] == f"better reply for {rid}"
    else:
        assert steps["refine"] == {"status": "skipped", "hash": steps["refine"]["hash"]}
        assert row["text"] == steps["judge"]["text"]


def test_each_record_goes_through_its_steps_and_the_row_holds_them_all(tmp_path: Path) -> None:
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 30)
        summary = run(recipe)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert summary["ok"] == len(rows) == 30
    for rid, row in rows.items():
        check_row(row)
        # Later templates saw the earlier steps: the judge was asked about this draft.
        (judge_body,) = fake.bodies[("judge", rid)]
        assert f"Draft: draft of {rid}" in judge_body["messages"][-1]["content"]
        assert judge_body["model"] == "gpt-judge"  # the step's provider option
        assert fake.bodies[("draft", rid)][0]["model"] == "gpt-test"
        ran = [s for s in row["steps"].values() if s["status"] == "ok"]
        assert row["attempts"] == len(ran)
        assert row["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in ran))
        # The judge's price is the judge model's, not the recipe's.
        assert row["steps"]["judge"]["cost_usd"] > row["steps"]["draft"]["cost_usd"]
    sent = fake.counts()
    low = sum(1 for rid in rows if score_of(rid) < 3)
    assert sum(v for (step, _), v in sent.items() if step == "refine") == low > 0
    assert set(sent.values()) == {1}
    assert not (tmp_path / "out.jsonl.llmrun/steps.jsonl").exists()  # nothing left unfinished


def test_killed_at_several_points_no_finished_step_is_sent_again(tmp_path: Path) -> None:
    n = 240
    fake = Steps()

    def slow_judge(request: RecordedRequest) -> Fault | None:
        # The judge is slow, so at any instant many records sit between two steps.
        step, _ = Steps.which(request.body)
        return Fault(status=200, delay_s=0.15) if step == "judge" else None

    with FakeOpenAI(reply=fake.reply, fault=slow_judge, latency_s=0.01) as server:
        recipe = steps_recipe(tmp_path, server, n, run={"concurrency": 16, "max_retries": 1})
        out = Output(tmp_path / "out.jsonl")
        journal = tmp_path / "out.jsonl.llmrun/steps.jsonl"
        between_steps = 0
        for target in (1, 80, 170):
            r = Run(recipe)
            r.wait_until(lambda: out.lines() >= target)  # noqa: B023
            r.process.send_signal(signal.SIGKILL)
            assert r.process.wait(timeout=60) == -signal.SIGKILL
            sent_at_kill = fake.counts()
            finished = finished_steps(journal, out)
            with_row = set(out.ids())
            between_steps += sum(1 for rid, _ in finished if rid not in with_row)
            r = Run(recipe)
            r.wait_until(lambda: out.lines() >= target + 20)  # noqa: B023
            r.process.send_signal(signal.SIGKILL)
            r.process.wait(timeout=60)
            sent = fake.counts()
            again = [(s, rid) for rid, s in finished if sent[(s, rid)] != sent_at_kill[(s, rid)]]
            assert not again, f"finished steps sent again: {again[:5]}"
        code, stderr = Run(recipe).finish()
        assert code == EXIT_OK, stderr
    assert between_steps > 0, "no kill caught a record between two steps"
    rows = by_id(out.rows())
    assert len(rows) == n
    for row in rows.values():
        check_row(row)
    assert not journal.exists()


def finished_steps(journal: Path, out: Output) -> set[tuple[str, str]]:
    """(record, step) finished when the run was killed: in a row, or in the journal."""
    found: set[tuple[str, str]] = set()
    if journal.exists():
        for line in journal.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                entry = json.loads(line)
                found.add((entry["id"], entry["step"]))
    data = out.path.read_bytes() if out.path.exists() else b""
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        row = json.loads(line)
        found |= {(row["id"], s) for s, r in row["steps"].items() if r["status"] == "ok"}
    return found


def test_retry_errors_redoes_only_the_failed_step(tmp_path: Path) -> None:
    fake = Steps()
    failing = {"r00003", "r00007"}

    def judge_fails(request: RecordedRequest) -> Fault | None:
        step, rid = Steps.which(request.body)
        return Fault(status=400) if step == "judge" and rid in failing else None

    with FakeOpenAI(reply=fake.reply, fault=judge_fails) as server:
        recipe = steps_recipe(tmp_path, server, 10)
        run(recipe, expect=EXIT_ERRORS)
        rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
        for rid in failing:
            assert rows[rid]["status"] == "error"
            assert rows[rid]["steps"]["draft"]["status"] == "ok"
            assert rows[rid]["steps"]["judge"]["status"] == "error"
            assert "refine" not in rows[rid]["steps"]  # a failed step ends the record
        before = fake.counts()
        failing.clear()
        run(recipe, "--retry-errors")
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 10
    for row in rows.values():
        check_row(row)
    sent = fake.counts()
    for rid in ("r00003", "r00007"):
        assert sent[("draft", rid)] == before[("draft", rid)] == 1  # not asked again
        # Its failed judge calls were refused before the reply (not counted); now it is asked.
        assert before[("judge", rid)] == 0 and sent[("judge", rid)] == 1
    assert {k: v for k, v in sent.items() if k[1] not in ("r00003", "r00007")} == {
        k: v for k, v in before.items() if k[1] not in ("r00003", "r00007")
    }


def test_an_edited_judge_prompt_recalls_only_the_judge_and_a_copy_sends_nothing(
    tmp_path: Path,
) -> None:
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 20, cache="calls.db")
        run(recipe)
        first = fake.counts()
        assert sum(first.values()) > 40
        steps_recipe(tmp_path, server, 20, cache="calls.db", judge_system="STEP judge: be strict.")
        summary = run(recipe, "--fresh")
        sent = fake.counts() - first
        # The drafts and the refines (their requests came out the same) are in the cache.
        assert set(step for step, _ in sent) == {"judge"} and sum(sent.values()) == 20
        assert summary["ok"] == 20
        rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
        for row in rows.values():
            assert row["steps"]["draft"]["cached"] and not row["steps"]["judge"]["cached"]
        # Another team's copy, writing elsewhere, with the same cache: nothing is sent.
        copy = steps_recipe(
            tmp_path,
            server,
            20,
            cache="calls.db",
            judge_system="STEP judge: be strict.",
            name="team-b.yaml",
            output="team-b/out.jsonl",
        )
        total = sum(fake.counts().values())
        run(copy)
        assert sum(fake.counts().values()) == total
    rows = by_id(read_jsonl(tmp_path / "team-b/out.jsonl"))
    assert len(rows) == 20 and all(row["cached"] for row in rows.values())
    for row in rows.values():
        check_row(row)


def test_n_samples_keep_the_best_or_stop_at_the_first_that_passes(tmp_path: Path) -> None:
    drawn: Counter[str] = Counter()
    lock = threading.Lock()

    def reply(body: Any) -> str:
        step, rid = Steps.which(body)
        if step == "draft":
            return f"draft of {rid}"
        with lock:
            drawn[f"{step} {rid}"] += 1
            k = drawn[f"{step} {rid}"]
        if step == "pick":  # the first draw fails its postprocessor, the next passes
            return "no grade" if k == 1 else f"Score: {k}"
        return f"Score: {[2, 5, 3][(k - 1) % 3]}"

    with FakeOpenAI(reply=reply) as server:
        write_jsonl(tmp_path / "data.jsonl", make_records(6))
        grade = [{"regex": {"pattern": "Score: (?P<score>[0-9])"}}]
        recipe = write_recipe(
            tmp_path,
            {
                "data": {"path": "data.jsonl", "id": "id"},
                "provider": {
                    "name": "openai",
                    "base_url": server.url,
                    "model": "m",
                    "api_keys": [KEY],
                },
                "steps": [
                    {"name": "draft", "prompt": "STEP draft id={{ id }}"},
                    {
                        "name": "best",
                        "n": 3,
                        "select": {"max": "score"},
                        "generation": {"temperature": 1},
                        "prompt": "STEP best: {{ steps.draft.text }} id={{ id }}",
                        "postprocess": grade,
                    },
                    {
                        "name": "pick",
                        "n": 4,
                        "prompt": "STEP pick id={{ id }}",
                        "postprocess": grade,
                    },
                ],
                "output": {"path": "out.jsonl"},
            },
        )
        run(recipe)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 6
    for row in rows:
        best, pick = row["steps"]["best"], row["steps"]["pick"]
        assert best["fields"] == {"score": "5"} and best["attempts"] == 3
        assert sorted(s["fields"]["score"] for s in best["samples"]) == ["2", "3", "5"]
        assert best["samples"][best["chosen"]]["fields"]["score"] == "5"
        assert pick["chosen"] == 1 and len(pick["samples"]) == 2  # stopped at the first pass
        assert pick["samples"][0]["status"] == "error" and pick["fields"] == {"score": "2"}
        assert drawn[f"pick {row['id']}"] == 2  # the other two were never paid for


def test_a_condition_that_fails_on_a_record_is_its_error_row(tmp_path: Path) -> None:
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 4)
        text = recipe.read_text(encoding="utf-8").replace(
            "steps.judge.fields.score | int < 3", "steps.judge.fields.nothing > 1"
        )
        recipe.write_text(text, encoding="utf-8")
        run(recipe, expect=EXIT_ERRORS)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "error" and row["error"]["type"] == "template"
        assert "refine: when" in row["error"]["message"]
        assert row["steps"]["judge"]["status"] == "ok"
    assert not any(step == "refine" for step, _ in fake.counts())


def test_a_damaged_or_stale_journal_costs_calls_at_worst_never_a_wrong_row(
    tmp_path: Path,
) -> None:
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 5)
        state = tmp_path / "out.jsonl.llmrun"
        state.mkdir()
        stale = {"id": "r00001", "step": "draft", "hash": "0" * 16, "result": {"text": "forged"}}
        # The step's real hash, but a result not of the journal's shape (no status, fields
        # not a mapping): not taken up, where it would have ended the record or crashed it.
        digest = load_recipe(recipe, load_registry(entry_points=False)).steps[0].hash
        shapeless = {"id": "r00003", "step": "draft", "hash": digest, "result": {"fields": 1}}
        (state / "steps.jsonl").write_bytes(
            b"not json\n"
            + json.dumps(stale).encode()
            + b"\n"
            + json.dumps(shapeless).encode()
            + b"\n"
            + b'{"id": ["x"], "step": 1, "hash": null, "result": 3}\n'
            + b"[]\n"
            + b'{"id": "r00002", "step": "dr'  # a torn last line
        )
        run(recipe)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 5
    for row in rows.values():
        check_row(row)  # the forged draft of a changed step was not taken up


def test_a_steps_journal_that_is_not_a_file_is_not_read(tmp_path: Path) -> None:
    # A state folder shipped with a FIFO for a journal: the run waited for a writer forever.
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 3)
        state = tmp_path / "out.jsonl.llmrun"
        state.mkdir()
        os.mkfifo(state / "steps.jsonl")
        assert run(recipe)["ok"] == 3
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 3
    for row in rows.values():
        check_row(row)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"prompt": "x"}, "not both"),
        (
            {
                "steps": [
                    {"name": "a", "prompt": "{{ steps.b.text }}"},
                    {"name": "b", "prompt": "y"},
                ]
            },
            "comes at or after it",
        ),
        ({"steps": [{"name": "a", "prompt": "{{ steps.nope.text }}"}]}, "no step of that name"),
        ({"steps": [{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}]}, "used twice"),
        (
            {"steps": [{"name": "a", "prompt": "x", "provider": {"api_keys": ["k"]}}]},
            "not `api_keys`",
        ),
        (
            {
                "steps": [
                    {"name": "a", "prompt": "x", "provider": {"base_url": "http://127.0.0.1:9"}}
                ]
            },
            "not `base_url`",
        ),
        ({"steps": [{"name": "a", "prompt": "x", "when": "1 +"}]}, "not a Jinja expression"),
        (
            {"steps": [{"name": "a", "prompt": "x", "when": "steps.__class__.__mro__"}]},
            "reaches for '__class__'",
        ),
        ({"steps": [{"name": "a", "prompt": "x", "select": "first"}]}, "set `n` above 1"),
        ({"steps": [{"name": "a", "prompt": {"messages": "record"}}]}, "messages: record"),
        ({"steps": [{"name": "a", "prompt": "x", "provider": {"modle": "m"}}]}, "modle"),
        ({"run": {"mode": "auto"}}, "runs direct or batch"),
        ({"postprocess": ["strip"]}, "its own `postprocess`"),
    ],
)
def test_a_faulty_steps_recipe_is_refused_before_any_call(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(2))
    recipe: dict[str, Any] = {
        "data": {"path": "data.jsonl", "id": "id"},
        "provider": {"name": "mock"},
        "steps": [{"name": "only", "prompt": "{{ text }}"}],
        "output": {"path": "out.jsonl"},
    }
    recipe.update(change)
    path = write_recipe(tmp_path, recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, load_registry(entry_points=False))
    assert any(expected in p.message for p in info.value.problems), [
        str(p) for p in info.value.problems
    ]
    done = read_cli("validate", str(path), cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and expected in done.stderr, done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def set_posts(recipe: Path, step: str, posts: list[Any]) -> None:
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    next(s for s in data["steps"] if s["name"] == step)["postprocess"] = posts
    recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def repost(recipe: Path) -> dict[str, Any]:
    done = run_cli("repost", str(recipe), "--json", cwd=recipe.parent)
    assert done.returncode in (EXIT_OK, EXIT_ERRORS), done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_repost_redoes_each_step_and_hands_what_needs_a_call_to_retry_errors(
    tmp_path: Path,
) -> None:
    fake = Steps()
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 20)
        run(recipe)
        sent = fake.counts()
        # The last step's chain: nothing reads it, so the rows are redone in place.
        set_posts(recipe, "refine", [{"regex": {"pattern": "for (?P<who>r\\d+)"}}])
        summary = repost(recipe)
        assert summary["pending"] == 0 and summary["changed"] == sum(
            1 for i in range(20) if score_of(f"r{i:05d}") < 3
        )
        rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
        for rid, row in rows.items():
            if score_of(rid) < 3:
                assert row["fields"] == row["steps"]["refine"]["fields"] == {"who": rid}
            check_row(row)
        # The judge's chain: the refine step read its fields, so it must be asked again.
        grade = {"regex": {"pattern": "Score: (?P<score>[1-5])(?P<sure>)"}}
        set_posts(recipe, "judge", [grade])
        summary = repost(recipe)
        assert summary["pending"] == 20
        rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
        for row in rows.values():
            assert row["status"] == "error" and row["error"]["type"] == "steps_pending"
            assert "step refine" in row["error"]["message"]
            assert list(row["steps"]) == ["draft", "judge"]
            assert row["steps"]["judge"]["fields"]["sure"] == ""
        assert fake.counts() == sent  # repost calls nothing
        run(recipe, "--retry-errors")
    again = fake.counts() - sent
    assert {step for step, _ in again} == {"refine"}  # the drafts and grades were kept
    assert sum(again.values()) == sum(1 for i in range(20) if score_of(f"r{i:05d}") < 3)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == 20
    for row in rows.values():
        assert row["steps"]["judge"]["fields"]["sure"] == ""
        row["steps"]["judge"]["fields"].pop("sure")
        check_row(row)


def test_a_step_that_failed_its_chain_and_passes_after_repost_goes_on(tmp_path: Path) -> None:
    fake = Steps()
    fake.judge_reply = "Grade: {score}"  # the recipe's regex looks for "Score:"
    with FakeOpenAI(reply=fake.reply) as server:
        recipe = steps_recipe(tmp_path, server, 10)
        run(recipe, expect=EXIT_ERRORS)
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert all(r["steps"]["judge"]["error"]["type"] == "postprocess" for r in rows)
        sent = fake.counts()
        set_posts(recipe, "judge", [{"regex": {"pattern": "Grade: (?P<score>[1-5])"}}])
        assert repost(recipe)["pending"] == 10
        run(recipe, "--retry-errors")
    again = fake.counts() - sent
    assert {step for step, _ in again} == {"refine"}
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    for rid, row in rows.items():
        assert row["status"] == "ok" and row["steps"]["judge"]["fields"]["score"] == str(
            score_of(rid)
        )
        refined = row["steps"]["refine"]["status"] == "ok"
        assert refined == (score_of(rid) < 3) == (("refine", rid) in again)


def test_select_reads_numbers_and_nothing_that_would_win_unfairly() -> None:
    from llmrun.run.steps import _number

    assert [_number(v) for v in (3, 2.5, "4", " 7 ", "1e2")] == [3.0, 2.5, 4.0, 7.0, 100.0]
    for bad in (True, None, "inf", "-inf", "nan", "NaN", "high", [5], {"x": 1}, float("inf")):
        assert _number(bad) is None, bad
