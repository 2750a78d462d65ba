"""The `openai` provider in full: every generation key on the wire (checked field by field on
the server and against the OpenAI spec), structured output, tool calls, n choices, images,
keys a server lacks dropped with one warning."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.builtins.openai import OpenAIChat
from llmrun.errors import RecordError
from llmrun.recipe.model import freeze
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_openai_spec import ChatSpec
from .test_openai_spec import spec as spec
from .test_run import openai

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_label",
            "description": "Record the label.",
            "parameters": {
                "type": "object",
                "properties": {"label": {"type": "string"}},
                "required": ["label"],
            },
        },
    }
]
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}
EVERY_KEY = {
    "temperature": 0.3,
    "top_p": 0.8,
    "max_completion_tokens": 50,
    "stop": ["END"],
    "seed": 7,
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logprobs": True,
    "top_logprobs": 2,
    "reasoning_effort": "minimal",
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "set_label"}},
    "response_format": SCHEMA_FORMAT,
}


def run(folder: Path, provider: dict[str, Any], n: int = 3, **overrides: Any) -> Any:
    write_jsonl(folder / "data.jsonl", make_records(n))
    recipe = write_recipe(folder, basic_recipe(provider, **overrides))
    return run_cli("run", str(recipe), cwd=folder)


def test_every_generation_key_reaches_the_server_as_set(
    tmp_path: Path, fake_openai: FakeOpenAI, spec: ChatSpec
):
    fake_openai.reply = lambda body: json.dumps({"label": "positive"})
    result = run(
        tmp_path,
        openai(fake_openai, extra_body={"guided_json": {"type": "object"}}),
        generation=EVERY_KEY,
    )
    assert result.returncode == 0, result.stderr
    assert "is not supported" not in result.stderr  # OpenAI takes every key but top_k
    assert len(fake_openai.requests) == 3
    for request in fake_openai.requests:
        body = request.body
        for key, value in EVERY_KEY.items():
            assert body[key] == value, key
        assert body["guided_json"] == {"type": "object"}  # extra_body passes through
        body.pop("guided_json")  # vLLM's, not OpenAI's
        assert spec.problems(body) == []
    for row in read_jsonl(tmp_path / "out.jsonl"):
        assert row["response"]["parsed"] == {"label": "positive"}
        assert row["response"]["choices"] == ['{"label": "positive"}'] * 2


def tool_call_body(request: RecordedRequest) -> Fault:
    """A reply as OpenAI sends it when the model calls a tool (one call with JSON arguments,
    one with arguments that are not JSON)."""
    body = {
        "id": "chatcmpl-tools",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test-2024",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "set_label", "arguments": '{"label": "neg"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "set_label", "arguments": "{not json"},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 9,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    }
    return Fault(status=200, body=json.dumps(body).encode(), headers={"x-request-id": "req-9"})


def test_tool_calls_come_back_normalized(tmp_path: Path):
    with FakeOpenAI(fault=tool_call_body) as server:
        result = run(
            tmp_path, openai(server), n=2, generation={"tools": TOOLS, "tool_choice": "required"}
        )
        assert result.returncode == 0, result.stderr
        assert all(r.body["tool_choice"] == "required" for r in server.requests)
    for row in read_jsonl(tmp_path / "out.jsonl"):
        response = row["response"]
        assert response["finish_reason"] == "tool_calls"
        assert response["tool_calls"] == [
            {"id": "call_1", "name": "set_label", "arguments": {"label": "neg"}},
            {"id": "call_2", "name": "set_label", "arguments": "{not json"},
        ]
        assert response["usage"] == {
            "input_tokens": 20,
            "output_tokens": 9,
            "cached_tokens": 4,
            "reasoning_tokens": 3,
        }
        assert response["model"] == "gpt-test-2024" and response["request_id"] == "req-9"
        assert row["text"] is None


def chat(**options: Any) -> OpenAIChat:
    return OpenAIChat({"model": "gpt-4o-mini", **options}, ComponentContext(Path("."), "t"))


def image_prompt(*parts: dict[str, Any]) -> Prompt:
    content = [{"type": "text", "text": "What is this?"}, *parts]
    return Prompt("r1", [{"role": "user", "content": content}], freeze({}))


def test_image_parts_become_image_url_parts(tmp_path: Path, spec: ChatSpec):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = chat().body(
        image_prompt(
            {"type": "image", "source": str(path), "detail": "low"},
            {"type": "image", "source": "https://example.com/cat.jpg", "detail": None},
            {"type": "image", "source": data_url, "detail": "high"},
        )
    )
    assert spec.problems(body) == []
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}},
    ]


def test_an_unreadable_image_is_a_record_error(tmp_path: Path):
    with pytest.raises(RecordError, match="cannot read image"):
        chat().body(image_prompt({"type": "image", "source": str(tmp_path / "nope.png")}))


def test_json_that_does_not_parse_leaves_parsed_unset():
    provider = chat()
    provider.body(Prompt("r", [], freeze({"response_format": {"type": "json_object"}})))
    data = {"choices": [{"message": {"content": "not json"}, "finish_reason": "stop"}]}
    assert provider.reply_from_body(data).parsed is None
    data["choices"][0]["message"]["content"] = '{"a": [1]}'
    assert provider.reply_from_body(data).parsed == {"a": [1]}
    assert chat().reply_from_body(data).parsed is None  # JSON was not asked for


def test_reply_from_body_is_what_parse_response_uses():
    data = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"content": "a"}, "finish_reason": "length"},
            {"index": 1, "message": {"content": "b"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    reply = chat().reply_from_body(data)
    assert (reply.text, reply.finish_reason, reply.choices) == ("a", "length", ["a", "b"])
    assert reply.request_id == "chatcmpl-1" and reply.raw is data and reply.parsed is None


def test_a_refusal_is_a_filtered_answer():
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    data = {"choices": [{"message": message, "finish_reason": "stop"}]}
    reply = chat().reply_from_body(data)
    assert (reply.text, reply.finish_reason, reply.parsed) == (None, "content_filter", None)


def test_build_request_is_the_request_httpx_builds_from_content(tmp_path: Path) -> None:
    """The provider prepares headers once per key; the result must equal httpx's own."""
    import httpx

    from llmrun.builtins.openai import OpenAIChat
    from llmrun.values import ComponentContext, Prompt

    provider = OpenAIChat(
        {"model": "m", "base_url": "http://127.0.0.1:9/v1", "headers": {"X-Team": "a"}},
        ComponentContext(tmp_path, "t"),
    )
    for text in ("first", "a longer second prompt, ünïcode"):
        prompt = Prompt("r", [{"role": "user", "content": text}], {"max_tokens": 5})
        built = provider.build_request(prompt, "sk-test")
        # The headers httpx works out from the content and URL, left for httpx to add again.
        computed = ("host", "content-length")
        given = [(k, v) for k, v in built.headers.multi_items() if k not in computed]
        expected = httpx.Request("POST", built.url, headers=given, content=built.content)
        assert built.headers.multi_items() == expected.headers.multi_items()
        assert built.content == expected.content and built.method == "POST"


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"req_1")],
        [(b"x-request-id", b"a"), (b"X-REQUEST-ID", b"b")],  # several: joined as httpx joins
        [(b"x-request-id", "caf\u00e9".encode()), (b"server", b"\xff\xfe")],  # not ASCII
        [(b"content-type", "text/event-stream; charset=\u00e9".encode("latin-1"))],
        [],
    ],
)
def test_the_headers_the_provider_reads_are_what_httpx_gives(
    raw: list[tuple[bytes, bytes]],
) -> None:
    # One pass over the raw headers (openai_wire.header_values) instead of httpx's lookups:
    # the same strings, whatever the case, repeats and encoding.
    import httpx

    from llmrun.builtins.openai_wire import header_values

    headers = httpx.Headers(raw)
    names = (b"content-type", b"x-request-id", b"absent")
    assert header_values(headers, names) == [headers.get(n.decode()) for n in names]
