"""The anthropic provider against a fake Messages API on 127.0.0.1: the real CLI end to end, and
the provider's requests sent over real HTTP for what a recipe cannot express yet."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmrun.api import run_recipe_sync
from llmrun.builtins.anthropic import AnthropicMessages
from llmrun.errors import CallError
from llmrun.hookspecs import Register, hookimpl
from llmrun.images import ImageError
from llmrun.plugins import load_registry
from llmrun.testing.fake_anthropic import FakeAnthropic, Fault, RecordedRequest
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_limits import windows

KEY = "sk-ant-test-" + "5" * 20
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def anthropic(server: FakeAnthropic, **options: Any) -> dict[str, Any]:
    return {
        "name": "anthropic",
        "base_url": server.url,
        "model": "claude-haiku-4-5",
        "api_keys": [KEY],
        **options,
    }


def setup(folder: Path, provider: dict[str, Any], n: int = 6, **overrides: Any) -> Path:
    write_jsonl(folder / "data.jsonl", make_records(n))
    return write_recipe(folder, basic_recipe(provider, **overrides))


def rid_of(request: RecordedRequest) -> str:
    text = request.body["messages"][0]["content"]
    return str(text.split()[0].removeprefix("id="))


def test_a_run_sends_messages_api_requests_and_normalizes_replies(tmp_path: Path) -> None:
    generation = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 40, "stop": "STOP", "seed": 3}
    with FakeAnthropic(api_keys={KEY}, cache_read_tokens=1000, cache_creation_tokens=10) as srv:
        recipe = setup(tmp_path, anthropic(srv), generation=generation)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert srv.count("/v1/messages") == 6
    for request in srv.requests:
        assert request.method == "POST"
        assert request.headers["x-api-key"] == KEY
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in request.headers
        rid = rid_of(request)
        assert request.body == {
            "model": "claude-haiku-4-5",
            "max_tokens": 40,
            "messages": [{"role": "user", "content": f"id={rid} record number {int(rid[1:])}"}],
            "system": "You are terse.",
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["STOP"],
        }
    # seed has no Anthropic field: dropped, and said once per run, not once per record
    assert result.stderr.count("generation.seed is not supported by anthropic") == 1
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 6
    for row in rows:
        n = int(row["id"][1:])
        assert row["status"] == "ok"
        assert row["text"] == f"echo: id={row['id']} record number {n}"
        response = row["response"]
        assert response["finish_reason"] == "stop"
        assert response["model"] == "claude-haiku-4-5"
        assert response["request_id"].startswith("req_")
        usage = response["usage"]
        fresh = len(f"You are terse. id={row['id']} record number {n}".split())
        # input_tokens is the whole prompt: fresh + cache reads + cache writes
        assert usage == {
            "input_tokens": fresh + 1010,
            "output_tokens": 5,
            "cached_tokens": 1000,
        }
        # claude-haiku-4-5: $1/M input, $0.10/M cached input, $5/M output
        expected = ((fresh + 10) * 1.0 + 1000 * 0.1 + 5 * 5.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)


def test_max_tokens_falls_back_to_the_option_and_length_is_mapped(tmp_path: Path) -> None:
    with FakeAnthropic(api_keys={KEY}) as srv:
        recipe = setup(tmp_path, anthropic(srv, max_tokens=3), n=2)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r.body["max_tokens"] for r in srv.requests] == [3, 3]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert {r["response"]["finish_reason"] for r in rows} == {"length"}
    assert all(len(r["text"].split()) == 3 for r in rows)


def test_a_rejected_key_stops_the_run_after_one_call(tmp_path: Path) -> None:
    with FakeAnthropic(api_keys={"sk-ant-the-good-one"}) as srv:
        recipe = setup(tmp_path, anthropic(srv), n=30, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert srv.count() == 1
    assert "authentication_error" in result.stderr
    assert KEY not in result.stderr + result.stdout
    assert read_jsonl(tmp_path / "out.jsonl") == []


@pytest.mark.parametrize("status", [429, 529])
def test_rate_limits_and_overload_are_retried(tmp_path: Path, status: int) -> None:
    seen: dict[str, int] = {}

    def first_fails(request: RecordedRequest) -> Fault | None:
        rid = rid_of(request)
        seen[rid] = seen.get(rid, 0) + 1
        return Fault(status, headers={"retry-after": "0"}) if seen[rid] == 1 else None

    with FakeAnthropic(api_keys={KEY}, fault=first_fails) as srv:
        recipe = setup(tmp_path, anthropic(srv), n=4)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert srv.count() == 8
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["attempts"] for r in rows] == [2, 2, 2, 2]
    assert all(r["status"] == "ok" for r in rows)


def test_anthropic_ratelimit_headers_are_read_in_the_names_the_key_pool_knows() -> None:
    provider = AnthropicMessages(
        {"model": "claude-haiku-4-5", "api_keys": [KEY]}, ComponentContext(Path("."), "t")
    )
    reset = datetime.now(timezone.utc) + timedelta(seconds=30)
    headers = httpx.Headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
            "anthropic-ratelimit-tokens-limit": "40000",
        }
    )
    named = provider.rate_limit_headers(headers)
    assert named["x-ratelimit-limit-requests"] == "50"
    assert named["x-ratelimit-remaining-requests"] == "0"
    assert 28 < float(named["x-ratelimit-reset-requests"]) <= 30
    assert named["x-ratelimit-limit-tokens"] == "40000"
    assert "x-ratelimit-reset-tokens" not in named


def test_an_announced_request_limit_paces_a_run_with_no_limit_set(tmp_path: Path) -> None:
    # 600 a minute announced in anthropic-ratelimit-* headers: after the first answer, starts
    # are spaced 0.1 s apart (counted on the server), and the server refuses none. Unread,
    # the 11 others would all go at once (a loopback endpoint has no slow start).
    with FakeAnthropic(api_keys={KEY}, requests_per_minute=600) as srv:
        recipe = setup(tmp_path, anthropic(srv), n=12)
        result = run_cli("run", str(recipe), cwd=tmp_path)
        arrivals = [r.received_at for r in srv.requests]
    assert result.returncode == 0, result.stderr
    assert srv.limited == 0 and len(arrivals) == 12
    assert windows(arrivals[1:], 0.5) <= 5 + 2  # one more for where the window falls, jitter


def test_a_bad_request_is_an_error_row_and_an_unknown_model_stops_the_run(tmp_path: Path) -> None:
    def reject(request: RecordedRequest) -> Fault | None:
        if rid_of(request) == "r00001":
            body = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "prompt is too long"},
            }
            return Fault(400, body=json.dumps(body).encode())
        return None

    with FakeAnthropic(api_keys={KEY}, fault=reject) as srv:
        recipe = setup(tmp_path, anthropic(srv), n=3)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["r00001"]["status"] == "error"
    assert rows["r00001"]["error"]["message"] == (
        "HTTP 400: invalid_request_error: prompt is too long"
    )
    assert rows["r00001"]["attempts"] == 1
    assert rows["r00000"]["status"] == rows["r00002"]["status"] == "ok"

    other = tmp_path / "b"
    other.mkdir()
    with FakeAnthropic(api_keys={KEY}, fault=lambda request: Fault(404)) as srv:
        result = run_cli("run", str(setup(other, anthropic(srv), n=5)), cwd=other)
    assert result.returncode == 3, result.stderr
    assert srv.count() == 1
    assert "not_found_error" in result.stderr


# -- the provider over real HTTP: what a recipe's generation section cannot say yet --------


def provider(server: FakeAnthropic, **options: Any) -> tuple[AnthropicMessages, list[str]]:
    warnings: list[str] = []
    opts = {"model": "claude-sonnet-4-5", "base_url": server.url, **options}
    return AnthropicMessages(opts, ComponentContext(Path("."), "t", warnings.append)), warnings


def send(server: FakeAnthropic, prov: AnthropicMessages, prompt: Prompt) -> Any:
    with httpx.Client() as client:
        response = client.send(prov.build_request(prompt, KEY))
    return prov.parse_response(response)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_and_tool_choice_are_converted_and_tool_calls_normalized() -> None:
    with FakeAnthropic(api_keys={KEY}, reply=lambda body: '{"city": "Oslo"}') as srv:
        prov, _ = provider(srv)
        generation = {"tools": [WEATHER], "tool_choice": "required"}
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        reply = send(srv, prov, Prompt("a", messages, generation))
        sent = srv.requests[-1].body
        assert sent["tools"] == [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ]
        assert sent["tool_choice"] == {"type": "any"}
        assert reply.finish_reason == "tool_calls"
        assert reply.tool_calls == [
            {"id": reply.tool_calls[0]["id"], "name": "get_weather", "arguments": {"city": "Oslo"}}
        ]
        assert reply.tool_calls[0]["id"].startswith("toolu_")
        assert reply.text is None

        named = {"type": "function", "function": {"name": "get_weather"}}
        send(srv, prov, Prompt("b", messages, {"tools": [WEATHER], "tool_choice": named}))
        assert srv.requests[-1].body["tool_choice"] == {"type": "tool", "name": "get_weather"}
        send(srv, prov, Prompt("c", messages, {"tools": [WEATHER], "tool_choice": "none"}))
        assert srv.requests[-1].body["tool_choice"] == {"type": "none"}
        send(srv, prov, Prompt("d", messages, {"tool_choice": "auto"}))  # no tools: not sent
        assert "tool_choice" not in srv.requests[-1].body


def test_a_json_schema_response_format_is_a_forced_tool_and_comes_back_parsed() -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"enum": ["positive", "negative"]}},
        "required": ["label"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": schema}}
    with FakeAnthropic(api_keys={KEY}, reply=lambda body: '{"label": "positive"}') as srv:
        prov, _ = provider(srv)
        reply = send(
            srv,
            prov,
            Prompt("a", [{"role": "user", "content": "Great!"}], {"response_format": fmt}),
        )
        sent = srv.requests[-1].body
    assert sent["tools"] == [
        {
            "name": "structured_output",
            "description": "Give your whole answer as `sentiment`.",
            "input_schema": schema,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert reply.parsed == {"label": "positive"}
    assert json.loads(reply.text) == {"label": "positive"}
    assert reply.finish_reason == "stop"
    assert reply.tool_calls is None


def test_images_go_as_base64_and_url_sources(tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": str(picture), "detail": "low"},
        {"type": "image", "source": "https://example.test/dog.jpg"},
    ]
    with FakeAnthropic(api_keys={KEY}) as srv:
        prov, _ = provider(srv)
        messages = [
            {"role": "system", "content": "Describe."},
            {"role": "user", "content": content},
        ]
        reply = send(srv, prov, Prompt("a", messages, {}))
        sent = srv.requests[-1].body
    assert reply.text == "echo: What is this?"
    assert sent["system"] == "Describe."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(PNG).decode(),
                    },
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.test/dog.jpg"}},
            ],
        }
    ]
    bad = tmp_path / "fake.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="not a PNG"):
        prov.body(
            Prompt("b", [{"role": "user", "content": [{"type": "image", "source": str(bad)}]}], {})
        )


def test_the_fake_checks_requests_like_the_api(tmp_path: Path) -> None:
    with FakeAnthropic(api_keys={KEY}) as srv, httpx.Client(base_url=srv.url) as client:
        good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        ok = client.post("/v1/messages", json=good, headers=headers)
        assert ok.status_code == 200
        assert ok.headers["request-id"].startswith("req_")
        assert ok.json()["type"] == "message"
        cases = [
            ({**good, "max_tokens": None}, "body.max_tokens"),
            ({"model": "m", "messages": []}, "body.max_tokens: Field required"),
            ({**good, "temperature": 1.5}, "between 0 and 1"),
            ({**good, "messages": [{"role": "system", "content": "x"}]}, "body.messages.0.role"),
            ({**good, "seed": 1}, "body.seed: Extra inputs are not permitted"),
            (
                {
                    **good,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/jpeg",
                                        "data": base64.b64encode(PNG).decode(),
                                    },
                                }
                            ],
                        }
                    ],
                },
                "does not match the provided media type",
            ),
        ]
        for body, message in cases:
            answer = client.post("/v1/messages", json=body, headers=headers)
            assert answer.status_code == 400, body
            error = answer.json()
            assert error["type"] == "error"
            assert error["error"]["type"] == "invalid_request_error"
            assert message in error["error"]["message"]
        no_version = client.post("/v1/messages", json=good, headers={"x-api-key": KEY})
        assert "anthropic-version" in no_version.json()["error"]["message"]


@pytest.mark.parametrize(
    ("status", "error_type", "kind", "code"),
    [
        (400, "invalid_request_error", "record", "invalid_request"),
        (401, "authentication_error", "key", "auth"),
        (403, "permission_error", "key", "auth"),
        (402, "billing_error", "key", "quota"),
        (404, "not_found_error", "run", "not_found"),
        (413, "request_too_large", "record", "invalid_request"),
        (429, "rate_limit_error", "retryable", "rate_limit"),
        (500, "api_error", "retryable", "server_error"),
        (529, "overloaded_error", "retryable", "server_error"),
    ],
)
def test_error_bodies_are_classified(status: int, error_type: str, kind: str, code: str) -> None:
    with FakeAnthropic(api_keys={KEY}, fault=lambda request: Fault(status)) as srv:
        prov, _ = provider(srv)
        with pytest.raises(CallError) as info:
            send(srv, prov, Prompt("a", [{"role": "user", "content": "hi"}], {}))
    assert (info.value.kind, info.value.code, info.value.status) == (kind, code, status)
    assert error_type in info.value.message


def test_refusal_maps_to_content_filter_and_dropped_keys_warn_once() -> None:
    refusal = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": "refusal",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 0},
    }
    fault = Fault(200, body=json.dumps(refusal).encode())
    with FakeAnthropic(api_keys={KEY}, fault=lambda request: fault) as srv:
        prov, warnings = provider(srv)
        generation = {"n": 2, "presence_penalty": 0.5, "temperature": 1.5}
        for _ in range(3):
            reply = send(srv, prov, Prompt("a", [{"role": "user", "content": "x"}], generation))
        assert srv.requests[-1].body["temperature"] == 1.0
    assert reply.finish_reason == "content_filter"
    assert reply.usage.input_tokens == 4
    assert reply.request_id.startswith("req_")  # the request-id header wins over the body id
    assert len(warnings) == 3
    assert any("generation.n" in w for w in warnings)
    assert any("presence_penalty" in w for w in warnings)
    assert any("sent as 1" in w for w in warnings)


def docs_snippet(section: str) -> dict[str, Any]:
    """The first YAML block of a ``## section`` of docs/providers.md."""
    text = (Path(__file__).resolve().parents[1] / "docs/providers.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    snippet = body.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded: dict[str, Any] = yaml.safe_load(snippet)
    return loaded


def test_the_docs_snippet_runs(tmp_path: Path) -> None:
    recipe = docs_snippet("anthropic")
    write_jsonl(tmp_path / "reviews.jsonl", [{"review_id": "a", "text": "Lovely."}])
    with FakeAnthropic(api_keys={KEY}) as srv:
        recipe["provider"]["base_url"] = srv.url
        path = write_recipe(tmp_path, recipe)
        # The key of api.anthropic.com goes to the fake server only once the user confirms it.
        refused = run_cli("run", str(path), cwd=tmp_path, env={"ANTHROPIC_API_KEY": KEY})
        assert refused.returncode == 2 and "--allow-host 127.0.0.1" in refused.stderr
        result = run_cli(
            "run",
            str(path),
            "--allow-host",
            "127.0.0.1",
            cwd=tmp_path,
            env={"ANTHROPIC_API_KEY": KEY},
        )
    assert result.returncode == 0, result.stderr
    assert srv.requests[0].body["system"].startswith("You label sentiment.")
    rows = read_jsonl(tmp_path / "out/sentiment-claude.jsonl")
    assert [(r["id"], r["text"]) for r in rows] == [("a", "echo: Lovely.")]


class PicturePlugin:
    """Stands in for the prompt's ``images:`` key (built elsewhere): the provider
    ``anthropic-pictures`` attaches the file named by the last word of the user message."""

    class Provider(AnthropicMessages):
        def body(self, prompt: Prompt) -> dict[str, Any]:
            text = prompt.messages[-1]["content"]
            part = {"type": "image", "source": text.split()[-1]}
            messages = [{"role": "user", "content": [{"type": "text", "text": text}, part]}]
            return super().body(Prompt(prompt.record_id, messages, prompt.generation))

    @staticmethod
    @hookimpl
    def register_providers(register: Register) -> None:
        register("anthropic-pictures", PicturePlugin.Provider)


def test_images_reach_the_server_from_a_record_and_a_bad_one_is_an_error_row(
    tmp_path: Path,
) -> None:
    (tmp_path / "good.png").write_bytes(PNG)
    (tmp_path / "bad.png").write_text("not an image")
    records = [
        {"id": "a", "text": str(tmp_path / "good.png")},
        {"id": "b", "text": str(tmp_path / "bad.png")},
    ]
    write_jsonl(tmp_path / "data.jsonl", records)
    registry = load_registry(entry_points=False, plugins={"pictures": PicturePlugin})
    with FakeAnthropic(api_keys={KEY}) as srv:
        spec = {**anthropic(srv), "name": "anthropic-pictures"}
        recipe = write_recipe(tmp_path, basic_recipe(spec, prompt="{{ text }}"))
        summary = run_recipe_sync(recipe, registry=registry)
    assert (summary.stats.ok, summary.stats.error) == (1, 1)
    assert srv.count() == 1  # the bad image was never sent
    block = srv.requests[0].body["messages"][0]["content"][1]
    assert block == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        },
    }
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["a"]["status"] == "ok"
    assert rows["b"]["status"] == "error"
    assert rows["b"]["error"]["type"] == "image"
    assert "is not a PNG, JPEG, GIF or WebP image" in rows["b"]["error"]["message"]


def test_cache_system_marks_the_system_prompt_for_the_prompt_cache(tmp_path: Path) -> None:
    with FakeAnthropic(api_keys={KEY}) as srv:
        recipe = setup(tmp_path, anthropic(srv, cache_system=True), n=2)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for request in srv.requests:
        assert request.body["system"] == [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
        ]


def test_an_empty_assistant_turn_is_left_out_as_the_api_refuses_it() -> None:
    with FakeAnthropic(api_keys={KEY}) as srv:
        prov, _ = provider(srv)
        messages = [
            {"role": "user", "content": "Give JSON."},
            {"role": "assistant", "content": ""},  # an empty reply, reasked
            {"role": "user", "content": "That was empty: answer in JSON."},
        ]
        reply = send(srv, prov, Prompt("a", messages, {}))
        assert [m["role"] for m in srv.requests[-1].body["messages"]] == ["user", "user"]
        assert reply.text == "echo: That was empty: answer in JSON."
        with httpx.Client(base_url=srv.url) as client:
            refused = client.post(
                "/v1/messages",
                json={"model": "m", "max_tokens": 5, "messages": messages},
                headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
            )
        assert refused.status_code == 400
        assert "non-empty content" in refused.json()["error"]["message"]
