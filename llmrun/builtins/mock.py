"""The ``mock`` provider: deterministic replies computed in-process, no key, no network.

It speaks the OpenAI wire format to a transport of its own, so a mock run goes through exactly
the code a real run does (request building, parsing, retries, writing). Good for trying a
recipe, for tests and for measuring the engine alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import httpx

from llmrun import ComponentContext, Register, Transport, hookimpl, thaw

from .jsontext import instance_of, read_schema, schema_path
from .openai import OpenAIChat

BAD_REPLY = "Sorry, I cannot help with that."


class MockProvider(OpenAIChat):
    """Replies derived from the prompt: one of ``replies`` picked by a hash of the prompt, or
    an echo of the last user message. ``error_rate`` of the calls fail with HTTP 500 (or
    ``error_status``) so retries and error rows can be tried without a server."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "default": "mock"},
            "latency_s": {
                "type": "number",
                "minimum": 0,
                "default": 0,
                "description": "Seconds each call takes.",
            },
            "replies": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Answer with one of these, chosen by the prompt's hash.",
            },
            "error_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
            "error_status": {"type": "integer", "minimum": 400, "maximum": 599, "default": 500},
            "seed": {
                "type": "integer",
                "default": 0,
                "description": "Seed of the draws (which calls fail, values of generated JSON).",
            },
            "json_schema": {
                "type": "object",
                "description": "Answer with JSON valid against this schema (else the one in "
                "generation.response_format when it holds a json_schema).",
            },
            "json_schema_file": {
                "type": "string",
                "description": "The same, from a JSON or YAML file relative to the recipe.",
            },
            "bad_replies": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "The first N answers to each prompt are `bad_reply` instead; "
                "a follow-up turn (a reask) gets the next answer.",
            },
            "bad_reply": {"type": "string", "default": BAD_REPLY},
        },
    }
    default_base_url = "http://mock.invalid/v1"
    options_from_env: ClassVar[Mapping[str, str]] = {}  # it calls no server
    has_batch_api: ClassVar[bool] = False  # batch_api() returns None (commands/preflight)

    @classmethod
    def key_endpoint(cls, options: Mapping[str, Any]) -> str:
        """Nowhere: the mock answers in-process, no key leaves it."""
        return ""

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__({"model": options.get("model", "mock")}, context)
        schema = thaw(options.get("json_schema"))
        if "json_schema_file" in options:
            who = "provider.json_schema_file"
            schema = read_schema(schema_path(context, str(options["json_schema_file"]), who), who)
        # `llmrun plan` reads it: the mock's calls take exactly this long.
        self.expected_latency_s = float(options.get("latency_s", 0))
        self._transport = MockTransport(
            latency_s=float(options.get("latency_s", 0)),
            replies=tuple(options.get("replies") or ()),
            error_rate=float(options.get("error_rate", 0)),
            error_status=int(options.get("error_status", 500)),
            seed=int(options.get("seed", 0)),
            json_schema=schema,
            bad_replies=int(options.get("bad_replies", 0)),
            bad_reply=str(options.get("bad_reply", BAD_REPLY)),
        )

    def transport(self) -> Transport | None:
        return self._transport

    def batch_api(self) -> Any:
        """None: the mock answers in-process; there is no batch endpoint to call."""
        return None


class MockTransport:
    """Answers chat-completion requests in-process, like a well-behaved server would."""

    def __init__(
        self,
        *,
        latency_s: float,
        replies: tuple[str, ...],
        error_rate: float,
        error_status: int,
        seed: int,
        json_schema: Mapping[str, Any] | None = None,
        bad_replies: int = 0,
        bad_reply: str = BAD_REPLY,
    ) -> None:
        self.latency_s = latency_s
        self.seed = seed
        self.json_schema = json_schema
        self.bad_replies = bad_replies
        self.bad_reply = bad_reply
        self.replies = replies
        self.error_rate = error_rate
        self.error_status = error_status
        self._random = random.Random(seed)
        self._calls = 0

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        self._calls += 1
        if self.latency_s:
            await anyio.sleep(self.latency_s)
        else:
            await anyio.lowlevel.checkpoint()
        if self.error_rate and self._random.random() < self.error_rate:
            failure = {"error": {"message": "mock failure (error_rate)", "type": "server_error"}}
            return httpx.Response(self.error_status, json=failure, request=request)
        payload = json.loads(request.content)
        messages = payload.get("messages") or []
        prompt_text = "\n".join(str(m.get("content", "")) for m in messages)
        user = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        digest = hashlib.sha256(prompt_text.encode("utf-8", "surrogatepass")).digest()
        schema = self.json_schema or _requested_schema(payload)
        # Stateless, so resume and concurrency cannot change it: how many bad answers this
        # conversation already holds says whether the next one is bad too.
        given = sum(
            1
            for m in messages
            if m.get("role") == "assistant" and m.get("content") == self.bad_reply
        )
        if given < self.bad_replies:
            text = self.bad_reply
        elif schema is not None:
            # Seeded by the prompt without the follow-ups to bad answers, so the answer after
            # a reask is the one a first try would have given.
            asked = list(messages)
            while (
                len(asked) >= 2
                and asked[-2].get("role") == "assistant"
                and asked[-2].get("content") == self.bad_reply
            ):
                del asked[-2:]
            prompt = "\n".join(str(m.get("content", "")) for m in asked)
            rng = random.Random(f"{self.seed}:{prompt}")
            text = json.dumps(instance_of(schema, rng), ensure_ascii=False)
        elif self.replies:
            text = self.replies[int.from_bytes(digest[:4], "big") % len(self.replies)]
        else:
            text = "mock reply to: " + " ".join(user.split())[:80]
        finish = "stop"
        limit = payload.get("max_tokens") or payload.get("max_completion_tokens")
        words = text.split(" ")
        if limit and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        n = int(payload.get("n") or 1)
        body: dict[str, Any] = {
            "id": "mock-" + digest[:6].hex(),
            "object": "chat.completion",
            "created": 0,
            "model": payload.get("model", "mock"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": len(prompt_text) // 4 + 1,
                "completion_tokens": n * (len(text) // 4 + 1),
                "total_tokens": len(prompt_text) // 4 + 1 + n * (len(text) // 4 + 1),
            },
        }
        # ASCII-escaped JSON, like the request: a lone surrogate in the prompt stays encodable.
        return httpx.Response(200, content=json.dumps(body).encode(), request=request)

    async def aclose(self) -> None:
        pass


def _requested_schema(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "object"}
    return None


@hookimpl
def register_providers(register: Register) -> None:
    register("mock", MockProvider)
