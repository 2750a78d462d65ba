"""The OpenAI-compatible gateway: Chat Completions and Embeddings bodies in, the recipe's
provider called, OpenAI-shaped answers out (whatever provider the recipe names)."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from ..values import Prompt, Reply

# Generation keys a client may set; the provider drops (with a warning) those it cannot send.
GENERATION_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "reasoning_effort",
)
ROLES = ("system", "developer", "user", "assistant")
IMAGE_URL_PREFIXES = ("http://", "https://", "data:")


class BadRequest(Exception):
    """The request cannot be served; the message names the field."""


def chat_prompt(body: Mapping[str, Any], request_id: str) -> Prompt:
    """The neutral prompt of a Chat Completions body (already checked against its schema)."""
    messages = [_message(m, f"messages[{i}]") for i, m in enumerate(body["messages"])]
    generation = {k: body[k] for k in GENERATION_KEYS if body.get(k) is not None}
    return Prompt(request_id, messages, generation)


def _message(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = message["role"]
    if role not in ROLES:
        raise BadRequest(f"{where}.role: {role!r} is not served (use one of {', '.join(ROLES)})")
    content = message.get("content")
    if content is None:
        content = ""
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if part.get("type") == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            url = str(image.get("url", ""))
            # A local path would make the server read its own files for a client: URLs only.
            if not url.startswith(IMAGE_URL_PREFIXES):
                raise BadRequest(f"{at}.image_url.url: only http(s) and data: URLs are taken")
            detail = image.get("detail")
            parts.append({"type": "image", "source": url, "detail": detail})
        else:
            raise BadRequest(f"{at}.type: {part.get('type')!r} is not served (text, image_url)")
    return {"role": role, "content": parts}


def completion(reply: Reply, model: str, request_id: str) -> dict[str, Any]:
    """A ``chat.completion`` object for the reply."""
    texts = reply.choices if reply.choices is not None else [reply.text]
    choices = []
    for i, text in enumerate(texts):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if i == 0 and reply.tool_calls:
            message["tool_calls"] = [_tool_call(c) for c in reply.tool_calls]
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": _finish(reply.finish_reason),
                "logprobs": None,
            }
        )
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or model,
        "choices": choices,
        "usage": usage(reply),
    }


def completion_chunks(reply: Reply, model: str, request_id: str) -> Iterator[bytes]:
    """The reply as a ``stream: true`` answer: server-sent events of ``chat.completion.chunk``
    objects (the whole text in one delta: the provider was called without streaming)."""
    whole = completion(reply, model, request_id)
    base = {k: whole[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    for choice in whole["choices"]:
        delta = {"role": "assistant", "content": choice["message"]["content"]}
        if "tool_calls" in choice["message"]:
            delta["tool_calls"] = [
                {"index": k, **call} for k, call in enumerate(choice["message"]["tool_calls"])
            ]
        first = {"index": choice["index"], "delta": delta, "finish_reason": None}
        yield _event(base | {"choices": [first]})
        last = {"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}
        yield _event(base | {"choices": [last]})
    yield _event(base | {"choices": [], "usage": whole["usage"]})
    yield b"data: [DONE]\n\n"


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def usage(reply: Reply) -> dict[str, int]:
    prompt_tokens = reply.usage.input_tokens or 0
    completion_tokens = reply.usage.output_tokens or 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finish(reason: str | None) -> str:
    # The neutral "other" has no OpenAI name: a stop is the least surprising.
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": str(call.get("id") or "call_" + uuid.uuid4().hex[:12]),
        "type": "function",
        "function": {"name": str(call.get("name")), "arguments": arguments},
    }


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    value = body["input"]
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise BadRequest("input: give at least one text")
    return texts


def embedding_prompts(texts: list[str], request_id: str) -> list[Prompt]:
    return [
        Prompt(f"{request_id}-{i}", [{"role": "user", "content": text}], {})
        for i, text in enumerate(texts)
    ]


def embeddings(
    vectors: list[list[float]], tokens: int, model: str, encoding: str
) -> dict[str, Any]:
    """An embeddings ``list`` object; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for i, vector in enumerate(vectors):
        item: Any = vector
        if encoding == "base64":
            item = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": item})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which its client turns into the right exception."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
