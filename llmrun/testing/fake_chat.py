"""The fake OpenAI server's chat completions: the request checked as the API checks it (messages,
``n``, ``max_tokens``), the reply (the test's callback, or an echo) cut at ``max_tokens``, and
the answer as one JSON body or, for ``stream: true``, a whole stream of server-sent events."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from .http11 import Headers
from .openai_bodies import count_prompt_tokens, dumps, echo_reply, error_json, positive_int

MAX_N = 128
FINGERPRINT = "fp_fake"
SSE_PIECES = re.compile(r"\S+\s*|\s+")


def chat_answer(
    body: Any, request_id: str, default_model: str, reply: Callable[[Any], str] | None = None
) -> tuple[int, Headers, bytes]:
    """The answer to a chat completions request: 400 where the API refuses the body; else
    ``reply(body)`` (an echo of the last user message without one) cut at ``max_tokens``, ``n``
    choices, as one JSON body or, with ``stream: true``, as server-sent events."""
    if not isinstance(body, dict):
        return error_json(400, "The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        return error_json(
            400,
            "Missing required parameter: 'messages'.",
            code="missing_required_parameter",
            param="messages",
        )
    if not messages:
        return error_json(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            code="empty_array",
            param="messages",
        )
    n = body.get("n")
    if n is None:
        n = 1
    elif not positive_int(n) or n > MAX_N:
        return error_json(
            400,
            f"Invalid 'n': expected an integer between 1 and {MAX_N}.",
            code="invalid_value",
            param="n",
        )
    limit: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not positive_int(value):
            return error_json(
                400,
                f"Invalid '{key}': expected an integer >= 1, got {value!r}.",
                code="invalid_value",
                param=key,
            )
        limit = value if limit is None else min(limit, value)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        model = default_model
    text = echo_reply(body) if reply is None else reply(body)
    if not isinstance(text, str):
        raise TypeError(f"reply callback returned {type(text).__name__}, not str")
    words = text.split()
    if limit is not None and limit < len(words):
        content, finish, completion_tokens = " ".join(words[:limit]), "length", limit
    else:
        content, finish, completion_tokens = text, "stop", len(words)
    prompt_tokens = count_prompt_tokens(messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens * n,
        "total_tokens": prompt_tokens + completion_tokens * n,
    }
    completion_id = "chatcmpl-" + request_id[4:]
    created = int(time.time())
    if body.get("stream") is True:
        return _chat_stream(body, completion_id, created, model, n, content, finish, usage)
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": finish,
        }
        for i in range(n)
    ]
    response = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return 200, [("content-type", "application/json")], dumps(response)


def _chat_stream(
    body: dict[str, Any],
    completion_id: str,
    created: int,
    model: str,
    n: int,
    content: str,
    finish: str,
    usage: dict[str, int],
) -> tuple[int, Headers, bytes]:
    """A whole ``stream: true`` answer as one SSE body."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return b"data: " + dumps({**base, "choices": [choice]}) + b"\n\n"

    events: list[bytes] = []
    for i in range(n):
        events.append(chunk(i, {"role": "assistant", "content": "", "refusal": None}, None))
        events.extend(chunk(i, {"content": p}, None) for p in SSE_PIECES.findall(content))
        events.append(chunk(i, {}, finish))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(b"data: " + dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return 200, [("content-type", "text/event-stream; charset=utf-8")], b"".join(events)
