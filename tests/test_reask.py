"""Reasks end to end through the real CLI: a reply rejected with feedback goes back to the model
as a follow-up turn, the chain reruns, and the extra calls, tokens and cost are in the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.testing.openai_bodies import count_prompt_tokens

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe

PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
    },
}
PRICES = {"gpt-test": {"input": 1.0, "output": 2.0}, "mock": {"input": 1.0, "output": 2.0}}


def recipe_in(folder: Path, provider: dict[str, Any], reask: int, n: int = 4) -> Path:
    write_jsonl(folder / "data.jsonl", make_records(n))
    recipe = basic_recipe(
        provider,
        postprocess=[{"json_schema": {"schema": PERSON, "reask": reask}}],
        prices=PRICES,
    )
    return write_recipe(folder, recipe)


def test_invalid_first_valid_after_feedback_with_the_fake_server(tmp_path: Path) -> None:
    def reply(body: Any) -> str:
        last = body["messages"][-1]["content"]
        if last.startswith("Your JSON does not match"):
            return '{"name": "Ann", "age": 31}'
        return '{"name": "Ann", "age": -5}'  # wrong: age below the minimum

    with FakeOpenAI(reply=reply) as server:
        provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
        path = recipe_in(tmp_path, provider, reask=2)
        done = run_cli("run", str(path), "--quiet")
        requests = list(server.requests)
    assert done.returncode == 0, done.stderr
    assert len(requests) == 8  # two calls for each of the 4 records
    follow_ups = [r.body for r in requests if len(r.body["messages"]) == 4]
    assert len(follow_ups) == 4
    for body in follow_ups:
        _system, _user, assistant, feedback = body["messages"]
        assert assistant == {"role": "assistant", "content": '{"name": "Ann", "age": -5}'}
        assert feedback["role"] == "user"
        assert "age: -5 is less than the minimum of 0" in feedback["content"]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "ok"
        assert row["fields"] == {"name": "Ann", "age": 31}
        assert row["attempts"] == 2
        assert row["response"]["reasks"] == 1
        mine = [r.body for r in requests if f"id={row['id']} " in r.body["messages"][1]["content"]]
        assert len(mine) == 2
        expected_in = sum(count_prompt_tokens(b["messages"]) for b in mine)
        assert row["response"]["usage"]["input_tokens"] == expected_in
        output_tokens = row["response"]["usage"]["output_tokens"]
        assert output_tokens == 2 * 4  # each reply is 4 whitespace-separated words
        expected_cost = (expected_in * 1.0 + output_tokens * 2.0) / 1e6
        assert abs(row["cost_usd"] - expected_cost) < 1e-12


def test_mock_bad_first_reply_then_schema_json(tmp_path: Path) -> None:
    provider = {"name": "mock", "json_schema": PERSON, "bad_replies": 1, "seed": 7}
    path = recipe_in(tmp_path, provider, reask=1, n=6)
    done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["status"] for r in rows] == ["ok"] * 6
    for row in rows:
        assert set(row["fields"]) == {"name", "age"}
        assert 0 <= row["fields"]["age"] <= 130
        assert row["attempts"] == 2 and row["response"]["reasks"] == 1
        assert row["cost_usd"] and row["cost_usd"] > 0


def test_reasks_run_out_error_row_keeps_the_last_reply(tmp_path: Path) -> None:
    provider = {"name": "mock", "json_schema": PERSON, "bad_replies": 3}
    path = recipe_in(tmp_path, provider, reask=2, n=2)
    done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 1
    for row in read_jsonl(tmp_path / "out.jsonl"):
        assert row["status"] == "error"
        assert row["error"]["type"] == "postprocess"
        assert "no JSON found" in row["error"]["message"]
        assert row["attempts"] == 3 and row["response"]["reasks"] == 2
        assert row["response"]["text"] == "Sorry, I cannot help with that."


def test_no_reask_without_the_option(tmp_path: Path) -> None:
    provider = {"name": "mock", "json_schema": PERSON, "bad_replies": 1}
    path = recipe_in(tmp_path, provider, reask=0, n=2)
    assert run_cli("run", str(path), "--quiet").returncode == 1
    for row in read_jsonl(tmp_path / "out.jsonl"):
        assert row["attempts"] == 1 and "reasks" not in row["response"]


def test_failed_follow_up_is_an_error_row_with_both_attempts(tmp_path: Path) -> None:
    def fault(request: RecordedRequest) -> Fault | None:
        if len(request.body["messages"]) > 2:  # the follow-up turn is refused
            return Fault(status=400)
        return None

    with FakeOpenAI(reply=lambda body: "no json here", fault=fault) as server:
        provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
        path = recipe_in(tmp_path, provider, reask=3, n=1)
        done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 1
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["status"] == "error" and row["error"]["status"] == 400
    assert row["attempts"] == 2
    assert row["response"]["text"] == "no json here"  # the reply paid for is kept
    assert json.dumps(row)  # a plain JSON row


SCHEMAS: list[dict[str, Any]] = [
    PERSON,
    {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2, "maxItems": 3},
    {
        "type": "object",
        "required": ["tags", "score", "ok", "nested"],
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
            "nested": {"$ref": "#/$defs/inner"},
            "maybe": {"type": ["null", "integer"], "minimum": 10, "maximum": 12},
            "kind": {"const": "fixed"},
            "either": {"anyOf": [{"type": "string", "minLength": 8}, {"type": "integer"}]},
            "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
        },
        "$defs": {"inner": {"type": "object", "required": ["id"], "properties": {"id": {}}}},
    },
]


def test_mock_json_is_valid_for_each_schema_and_deterministic() -> None:
    import random

    import jsonschema

    from llmrun.builtins.jsontext import instance_of

    for schema in SCHEMAS:
        for seed in range(20):
            value = instance_of(schema, random.Random(seed))
            jsonschema.validate(value, schema)
            assert value == instance_of(schema, random.Random(seed))


def test_mock_schema_replies_are_the_same_on_a_fresh_run(tmp_path: Path) -> None:
    provider = {"name": "mock", "json_schema": SCHEMAS[2], "seed": 3}
    path = recipe_in(tmp_path, provider, reask=0, n=5)
    assert run_cli("run", str(path), "--quiet").returncode == 1  # PERSON rejects these
    # Rows are in completion order: compare them by record.
    first = {r["id"]: r["response"]["text"] for r in read_jsonl(tmp_path / "out.jsonl")}
    assert run_cli("run", str(path), "--quiet", "--fresh").returncode == 1
    again = {r["id"]: r["response"]["text"] for r in read_jsonl(tmp_path / "out.jsonl")}
    assert first == again and len(set(first.values())) > 1  # stable per record, not one answer
    for text in first.values():
        assert json.loads(text)["kind"] == "fixed"


def test_bad_postprocessor_options_stop_before_any_call(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(2))
    recipe = basic_recipe({"name": "mock"}, postprocess=[{"regex": {"pattern": "(unclosed"}}])
    done = run_cli("run", str(write_recipe(tmp_path, recipe)), "--quiet")
    assert done.returncode == 2
    assert "postprocess regex: bad pattern" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_mock_answer_after_a_bad_one_is_the_first_try_answer() -> None:
    import anyio
    import httpx

    from llmrun.builtins.mock import BAD_REPLY, MockTransport

    async def ask(transport: MockTransport, messages: list[dict[str, str]]) -> str:
        request = httpx.Request("POST", "http://mock.invalid/v1", json={"messages": messages})
        response = await transport.send(request, 1.0)
        return str(response.json()["choices"][0]["message"]["content"])

    async def main() -> None:
        common = dict(latency_s=0, replies=(), error_rate=0, error_status=500, seed=1)
        plain = MockTransport(**common, json_schema=PERSON)
        flaky = MockTransport(**common, json_schema=PERSON, bad_replies=1)
        few_shot = [
            {"role": "system", "content": "extract"},
            {"role": "user", "content": "example"},
            {"role": "assistant", "content": '{"name": "E", "age": 1}'},
        ]
        answers = set()
        for who in ("Ann is 3", "Bob is 4", "Cy is 5"):
            prompt = [*few_shot, {"role": "user", "content": who}]
            first = await ask(plain, prompt)
            assert await ask(flaky, prompt) == BAD_REPLY
            follow = [
                *prompt,
                {"role": "assistant", "content": BAD_REPLY},
                {"role": "user", "content": "fix it"},
            ]
            assert await ask(flaky, follow) == first
            answers.add(first)
        assert len(answers) == 3  # each record its own answer, few-shot turns or not

    anyio.run(main)
