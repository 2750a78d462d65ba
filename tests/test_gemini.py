"""The gemini provider against a fake Gemini API on 127.0.0.1: the real CLI end to end, the
provider's requests over real HTTP, and one recipe run against every fake changing only
``provider:``."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrun.api import run_recipe_sync
from llmrun.builtins.gemini import GeminiGenerate, response_schema
from llmrun.errors import CallError
from llmrun.hookspecs import Register, hookimpl
from llmrun.plugins import load_registry
from llmrun.testing.fake_anthropic import FakeAnthropic
from llmrun.testing.fake_gemini import FakeGemini, Fault, RecordedRequest
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_anthropic import PNG, docs_snippet

KEY = "AIza-test-" + "9" * 20


def gemini(server: FakeGemini, **options: Any) -> dict[str, Any]:
    return {
        "name": "gemini",
        "base_url": server.url,
        "model": "gemini-2.5-flash",
        "api_keys": [KEY],
        **options,
    }


def setup(folder: Path, provider: dict[str, Any], n: int = 5, **overrides: Any) -> Path:
    write_jsonl(folder / "data.jsonl", make_records(n))
    return write_recipe(folder, basic_recipe(provider, **overrides))


def rid_of(request: RecordedRequest) -> str:
    text = request.body["contents"][0]["parts"][0]["text"]
    return str(text.split()[0].removeprefix("id="))


def test_a_run_sends_generate_content_requests_and_normalizes_replies(tmp_path: Path) -> None:
    generation = {
        "temperature": 0.4,
        "top_p": 0.8,
        "max_tokens": 30,
        "stop": ["END"],
        "seed": 11,
        "presence_penalty": 0.1,
    }
    with FakeGemini(api_keys={KEY}, cached_tokens=400, thoughts_tokens=7) as srv:
        recipe = setup(tmp_path, gemini(srv), generation=generation)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert srv.count("/v1beta/models/gemini-2.5-flash:generateContent") == 5
    for request in srv.requests:
        assert request.headers["x-goog-api-key"] == KEY
        assert request.query == ""  # the key never goes in the URL
        rid = rid_of(request)
        assert request.body == {
            "contents": [
                {"role": "user", "parts": [{"text": f"id={rid} record number {int(rid[1:])}"}]}
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {
                "temperature": 0.4,
                "topP": 0.8,
                "seed": 11,
                "presencePenalty": 0.1,
                "maxOutputTokens": 30,
                "stopSequences": ["END"],
            },
        }
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 5
    for row in rows:
        n = int(row["id"][1:])
        assert row["status"] == "ok"
        assert row["text"] == f"echo: id={row['id']} record number {n}"
        response = row["response"]
        assert response["finish_reason"] == "stop"
        assert response["model"] == "gemini-2.5-flash"
        assert response["request_id"]
        prompt = len(f"You are terse. id={row['id']} record number {n}".split()) + 400
        assert response["usage"] == {
            "input_tokens": prompt,
            "output_tokens": 5 + 7,  # candidates + thinking, both billed as output
            "cached_tokens": 400,
            "reasoning_tokens": 7,
        }
        # gemini-2.5-flash: $0.30/M input, $0.075/M cached, $2.50/M output
        expected = ((prompt - 400) * 0.3 + 400 * 0.075 + 12 * 2.5) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)


def test_a_safety_block_is_an_error_row_with_the_reason(tmp_path: Path) -> None:
    def block(body: Any) -> str | None:
        return "SAFETY" if "number 2" in json.dumps(body) else None

    blocked_reply = {
        "candidates": [
            {
                "finishReason": "PROHIBITED_CONTENT",
                "index": 0,
                "safetyRatings": [
                    {
                        "category": "HARM_CATEGORY_HATE_SPEECH",
                        "probability": "HIGH",
                        "blocked": True,
                    }
                ],
            }
        ],
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abc",
    }

    def fault(request: RecordedRequest) -> Fault | None:
        if rid_of(request) == "r00003":
            return Fault(200, body=json.dumps(blocked_reply).encode())
        return None

    with FakeGemini(api_keys={KEY}, block_prompt=block, fault=fault) as srv:
        recipe = setup(tmp_path, gemini(srv))
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert srv.count() == 5  # not retried
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["r00002"]["status"] == "error"
    assert rows["r00002"]["error"]["type"] == "content_filter"
    assert rows["r00002"]["error"]["message"] == (
        "the prompt was blocked: SAFETY (HARM_CATEGORY_DANGEROUS_CONTENT: HIGH)"
    )
    assert rows["r00003"]["error"]["message"] == (
        "the reply was blocked: PROHIBITED_CONTENT (HARM_CATEGORY_HATE_SPEECH: HIGH)"
    )
    assert [rows[i]["status"] for i in ("r00000", "r00001", "r00004")] == ["ok"] * 3


def test_a_rejected_key_stops_the_run_after_one_call(tmp_path: Path) -> None:
    with FakeGemini(api_keys={"AIza-the-good-one"}) as srv:
        recipe = setup(tmp_path, gemini(srv), n=30, run={"concurrency": 8})
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert srv.count() == 1
    assert "API key not valid" in result.stderr
    assert KEY not in result.stderr + result.stdout
    assert read_jsonl(tmp_path / "out.jsonl") == []


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_unavailable_are_retried(tmp_path: Path, status: int) -> None:
    seen: dict[str, int] = {}

    def first_fails(request: RecordedRequest) -> Fault | None:
        rid = rid_of(request)
        seen[rid] = seen.get(rid, 0) + 1
        return Fault(status) if seen[rid] == 1 else None

    with FakeGemini(api_keys={KEY}, fault=first_fails) as srv:
        recipe = setup(tmp_path, gemini(srv), n=3)
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert srv.count() == 6
    assert [r["attempts"] for r in read_jsonl(tmp_path / "out.jsonl")] == [2, 2, 2]


def test_one_recipe_runs_against_every_fake_changing_only_the_provider(tmp_path: Path) -> None:
    records = make_records(4)
    texts: dict[str, list[tuple[str, str]]] = {}
    with FakeOpenAI() as oai, FakeAnthropic() as ant, FakeGemini() as gem:
        providers = {
            "openai": {"name": "openai", "base_url": oai.url, "model": "gpt-test"},
            "anthropic": {"name": "anthropic", "base_url": ant.url, "model": "claude-haiku-4-5"},
            "gemini": {"name": "gemini", "base_url": gem.url, "model": "gemini-2.5-flash"},
        }
        for name, spec in providers.items():
            folder = tmp_path / name
            folder.mkdir()
            write_jsonl(folder / "data.jsonl", records)
            recipe = basic_recipe(
                {**spec, "api_keys": ["k-1"]}, generation={"temperature": 0, "max_tokens": 20}
            )
            path = write_recipe(folder, recipe)
            result = run_cli("run", str(path), cwd=folder)
            assert result.returncode == 0, (name, result.stderr)
            rows = read_jsonl(folder / "out.jsonl")
            texts[name] = sorted((r["id"], r["text"]) for r in rows)
            assert all(r["response"]["usage"]["input_tokens"] > 0 for r in rows), name
        assert (oai.count(), ant.count(), gem.count()) == (4, 4, 4)
    assert texts["openai"] == texts["anthropic"] == texts["gemini"]
    assert texts["gemini"][0] == ("r00000", "echo: id=r00000 record number 0")


def test_the_docs_snippet_runs(tmp_path: Path) -> None:
    recipe = docs_snippet("gemini")
    write_jsonl(tmp_path / "reviews.jsonl", [{"review_id": "a", "text": "Lovely."}])
    with FakeGemini(api_keys={KEY}) as srv:
        recipe["provider"]["base_url"] = srv.url
        path = write_recipe(tmp_path, recipe)
        env = {"GEMINI_API_KEY": KEY}  # the key of Google's host: the user confirms the fake's
        result = run_cli("run", str(path), "--allow-host", "127.0.0.1", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert srv.count() == 1
    rows = read_jsonl(tmp_path / recipe["output"]["path"])
    assert [(r["id"], r["text"]) for r in rows] == [("a", "echo: Lovely.")]


# -- the provider over real HTTP: what a recipe's generation section cannot say yet --------


def provider(server: FakeGemini, **options: Any) -> tuple[GeminiGenerate, list[str]]:
    warnings: list[str] = []
    opts = {"model": "gemini-2.5-pro", "base_url": server.url, **options}
    return GeminiGenerate(opts, ComponentContext(Path("."), "t", warnings.append)), warnings


def send(prov: GeminiGenerate, prompt: Prompt) -> Any:
    with httpx.Client() as client:
        response = client.send(prov.build_request(prompt, KEY))
    return prov.parse_response(response)


def test_structured_output_sends_a_response_schema_and_comes_back_parsed() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "label": {"type": "string", "enum": ["positive", "negative"]},
            "score": {"type": ["number", "null"]},
            "kind": {"const": "review"},
        },
        "required": ["label"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    answer = '{"label": "positive", "score": 0.9, "kind": "review"}'
    with FakeGemini(api_keys={KEY}, reply=lambda body: answer) as srv:
        prov, warnings = provider(srv)
        prompt = Prompt("a", [{"role": "user", "content": "Great!"}], {"response_format": fmt})
        reply = send(prov, prompt)
        send(prov, prompt)
        sent = srv.requests[-1].body
    assert sent["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {
                "label": {"type": "STRING", "enum": ["positive", "negative"]},
                "score": {"type": "NUMBER", "nullable": True},
                "kind": {"enum": ["review"]},
            },
            "required": ["label"],
        },
    }
    assert reply.parsed == {"label": "positive", "score": 0.9, "kind": "review"}
    assert reply.text == answer
    assert warnings == [
        "generation.response_format schema keyword 'additionalProperties' is not supported by "
        "gemini: not sent (Gemini's responseSchema is an OpenAPI subset)"
    ]
    assert response_schema({"type": "array", "items": {"$ref": "#/x"}}, set()) == {
        "type": "ARRAY",
        "items": {},
    }


def test_tools_become_function_declarations_and_calls_are_normalized() -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with FakeGemini(api_keys={KEY}, reply=lambda body: '{"city": "Oslo"}') as srv:
        prov, _ = provider(srv)
        named = {"type": "function", "function": {"name": "get_weather"}}
        generation = {"tools": [weather], "tool_choice": named}
        reply = send(prov, Prompt("a", [{"role": "user", "content": "Oslo?"}], generation))
        sent = srv.requests[-1].body
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [
        {"id": "call_0", "name": "get_weather", "arguments": {"city": "Oslo"}}
    ]
    assert reply.text is None


def test_images_go_inline_and_urls_as_file_data(tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": str(picture)},
        {"type": "image", "source": "https://example.test/dog.jpg"},
    ]
    history = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": ""},  # an empty reply (reasked): left out
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": content},
    ]
    with FakeGemini(api_keys={KEY}) as srv:
        prov, _ = provider(srv)
        reply = send(prov, Prompt("a", history, {"n": 2}))
        sent = srv.requests[-1].body
    assert reply.text == "echo: What is this?"
    assert reply.choices == ["echo: What is this?"] * 2
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}]},
        {"role": "user", "parts": [{"text": "Hello?"}]},
        {"role": "model", "parts": [{"text": "Hi."}]},
        {
            "role": "user",
            "parts": [
                {"text": "What is this?"},
                {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG).decode()}},
                {
                    "file_data": {
                        "mime_type": "image/jpeg",
                        "file_uri": "https://example.test/dog.jpg",
                    }
                },
            ],
        },
    ]
    assert sent["generationConfig"] == {"candidateCount": 2}


def test_the_fake_checks_requests_like_the_api() -> None:
    with FakeGemini(api_keys={KEY}) as srv, httpx.Client(base_url=srv.url) as client:
        url = "/v1beta/models/gemini-2.5-flash:generateContent"
        good = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        headers = {"x-goog-api-key": KEY}
        assert client.post(url, json=good, headers=headers).status_code == 200
        assert client.post(url + f"?key={KEY}", json=good).status_code == 200
        cases = [
            ({**good, "generationConfig": {"maxTokens": 5}}, 'maxTokens: Extra inputs'),
            ({**good, "generationConfig": {"topK": 0.5}}, "expected an integer"),
            ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "role"),
            ({"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "empty text parameter"),
            (
                {**good, "generationConfig": {"responseMimeType": "application/json",
                                              "responseSchema": {"type": "object",
                                                                 "additionalProperties": False}}},
                'Unknown name "additionalProperties"',
            ),
            (
                {"contents": [{"parts": [{"inline_data": {
                    "mime_type": "image/jpeg", "data": base64.b64encode(PNG).decode()}}]}]},
                "the data is not image/jpeg",
            ),
        ]  # fmt: skip
        for body, message in cases:
            answer = client.post(url, json=body, headers=headers)
            assert answer.status_code == 400, body
            error = answer.json()["error"]
            assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
            assert message in error["message"]
        assert client.post(url, json=good).json()["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("status", "body", "kind", "code", "retry_after"),
    [
        (400, None, "record", "invalid_request", None),
        (403, None, "key", "auth", None),
        (404, None, "run", "not_found", None),
        (500, None, "retryable", "server_error", None),
        (503, None, "retryable", "server_error", None),
        (
            429,
            {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                    "retryDelay": "17s"}]}},
            "retryable", "rate_limit", 17.0,
        ),
        (
            429,
            {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                    "violations": [{"quotaId":
                                                    "GenerateRequestsPerDayPerProjectPerModel"}]}]}},
            "key", "quota", None,
        ),
        (
            400,
            {"error": {"code": 400, "message": "User location is not supported for the API use.",
                       "status": "FAILED_PRECONDITION"}},
            "run", "precondition", None,
        ),
    ],
)  # fmt: skip
def test_error_bodies_are_classified(
    status: int, body: Any, kind: str, code: str, retry_after: float | None
) -> None:
    payload = None if body is None else json.dumps(body).encode()
    with FakeGemini(api_keys={KEY}, fault=lambda request: Fault(status, body=payload)) as srv:
        prov, _ = provider(srv)
        with pytest.raises(CallError) as info:
            send(prov, Prompt("a", [{"role": "user", "content": "hi"}], {}))
    error = info.value
    assert (error.kind, error.code, error.status, error.retry_after) == (
        kind,
        code,
        status,
        retry_after,
    )


class PicturePlugin:
    """Stands in for the prompt's ``images:`` key (built elsewhere): the provider
    ``gemini-pictures`` attaches the file named by the last word of the user message."""

    class Provider(GeminiGenerate):
        def body(self, prompt: Prompt) -> dict[str, Any]:
            text = prompt.messages[-1]["content"]
            part = {"type": "image", "source": text.split()[-1]}
            messages = [{"role": "user", "content": [{"type": "text", "text": text}, part]}]
            return super().body(Prompt(prompt.record_id, messages, prompt.generation))

    @staticmethod
    @hookimpl
    def register_providers(register: Register) -> None:
        register("gemini-pictures", PicturePlugin.Provider)


def test_an_image_from_a_record_arrives_inline(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(PNG)
    write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": str(tmp_path / "good.png")}])
    registry = load_registry(entry_points=False, plugins={"pictures": PicturePlugin})
    with FakeGemini(api_keys={KEY}) as srv:
        spec = {**gemini(srv), "name": "gemini-pictures"}
        recipe = write_recipe(tmp_path, basic_recipe(spec, prompt="{{ text }}"))
        summary = run_recipe_sync(recipe, registry=registry)
    assert (summary.stats.ok, summary.stats.error) == (1, 0)
    assert srv.requests[0].body["contents"][0]["parts"][1] == {
        "inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG).decode()}
    }


@pytest.mark.parametrize(
    ("module", "path", "headers", "body"),
    [
        (
            "llmrun.testing.fake_anthropic",
            "/v1/messages",
            {"x-api-key": "k", "anthropic-version": "2023-06-01"},
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        ),
        (
            "llmrun.testing.fake_gemini",
            "/v1beta/models/m:generateContent",
            {"x-goog-api-key": "k"},
            {"contents": [{"parts": [{"text": "hi"}]}]},
        ),
    ],
)
def test_a_fake_runs_as_its_own_process_until_sigterm(
    module: str, path: str, headers: dict[str, str], body: dict[str, Any]
) -> None:
    command = [sys.executable, "-m", module, "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            answer = httpx.post(url + path, json=body, headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            assert "hi" in answer.text
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
