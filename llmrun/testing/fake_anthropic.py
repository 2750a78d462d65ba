"""A fake Anthropic Messages API on 127.0.0.1 for tests (``POST /v1/messages``).

It checks what the real API checks before answering: the ``x-api-key`` and ``anthropic-version``
headers, and the request body field by field against the documented request shape (required
fields, types, roles, content blocks, base64 images whose bytes match their media type, tools
with an ``input_schema``). A bad request gets the API's error body::

    {"type": "error", "error": {"type": "invalid_request_error", "message": "..."},
     "request_id": "req_..."}

and every answer carries a ``request-id`` header. The reply text is ``"echo: <last user
text>"`` (or what ``reply(body)`` returns); when the request forces a tool (``tool_choice`` of
type ``any`` or ``tool``), the answer is a ``tool_use`` block whose input is the reply text
parsed as a JSON object. ``max_tokens`` cuts the reply (one token per word) and ``stop_sequences``
end it, with the matching ``stop_reason``.

    with FakeAnthropic(api_keys={"sk-ant-test"}) as srv:
        ...  # provider: {name: anthropic, base_url: srv.url, ...}
        assert srv.count("/v1/messages") == 10

On its own: ``python -m llmrun.testing.fake_anthropic --port 0 [--latency S]`` prints its base URL
and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import time
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from ..images import sniff
from .fake_base import (
    Answer,
    FakeServer,
    Fault,
    RecordedRequest,
    json_answer,
    problems_of,
    serve,
)
from .http11 import Headers

__all__ = ["FakeAnthropic", "Fault", "RecordedRequest"]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error.",
    529: "Overloaded",
}
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _number_0_1(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "Input should be a valid number"
    return None if 0 <= value <= 1 else "Input should be between 0 and 1"


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "Input should be an integer greater than or equal to 1"
    return None


def _one_of(*allowed: str) -> Any:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"Input should be {' or '.join(map(repr, allowed))}"

    return check


TEXT_BLOCK = {"type": _one_of("text"), "text": str, "cache_control?": dict, "citations?": list}
BASE64_SOURCE = {"type": _one_of("base64"), "media_type": _one_of(*MEDIA_TYPES), "data": str}
URL_SOURCE = {"type": _one_of("url"), "url": str}
TOOL = {
    "name": str,
    "description?": str,
    "input_schema": {"type": _one_of("object"), "*": object},
    "cache_control?": dict,
}
TOOL_CHOICE = {
    "type": _one_of("auto", "any", "tool", "none"),
    "name?": str,
    "disable_parallel_tool_use?": bool,
}
BODY = {
    "model": str,
    "max_tokens": _positive_int,
    "messages": [{"role": _one_of("user", "assistant"), "content": (str, list)}],
    "system?": (str, list),
    "temperature?": _number_0_1,
    "top_p?": _number_0_1,
    "top_k?": _positive_int,
    "stop_sequences?": [str],
    "tools?": [TOOL],
    "tool_choice?": TOOL_CHOICE,
    "metadata?": dict,
    "stream?": bool,
    "thinking?": dict,
    "service_tier?": str,
}


class FakeAnthropic(FakeServer):
    """A fake Anthropic Messages API (see the module docstring).

    ``cache_read_tokens`` and ``cache_creation_tokens`` are reported in every reply's usage as
    the API does (apart from ``input_tokens``). ``requests_per_minute`` enforces a request
    limit per key as the API describes its own (a bucket of that many requests, full at first,
    refilled continuously) and announces it on every answer in ``anthropic-ratelimit-requests-
    limit|remaining|reset`` (reset: the RFC 3339 time the bucket is full again); a request over
    it gets a 429 ``rate_limit_error`` with ``retry-after``.
    """

    request_id_header = "request-id"

    def __init__(
        self,
        *,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        api_keys: Collection[str] | None = None,
        requests_per_minute: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_keys=api_keys, **kwargs)
        self.cache_read_tokens = cache_read_tokens
        self.cache_creation_tokens = cache_creation_tokens
        self.requests_per_minute = requests_per_minute
        self.limited = 0  # requests answered 429 by the limit
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at)

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        text = message or DEFAULT_MESSAGES.get(status, "Error.")
        body = {"type": "error", "error": {"type": kind, "message": text}}
        return [("content-type", "application/json")], json.dumps(body).encode()

    def _error(self, status: int, message: str, rid: str) -> Answer:
        kind = ERROR_TYPES.get(status, "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}
        return json_answer(status, body)

    def _answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any, rid: str
    ) -> Answer:
        if path != "/v1/messages":
            return self._error(404, "Not found", rid)
        if method != "POST":
            return self._error(405, f"Method {method} not allowed", rid)
        key = headers.get("x-api-key")
        if not key:
            return self._error(401, "x-api-key header is required", rid)
        if self.api_keys is not None and key not in self.api_keys:
            return self._error(401, "invalid x-api-key", rid)
        if "anthropic-version" not in headers:
            return self._error(400, "anthropic-version: header is required", rid)
        if not headers.get("content-type", "").startswith("application/json"):
            return self._error(400, "content-type must be application/json", rid)
        problems = problems_of(body, BODY, "body") if isinstance(body, dict) else ["body: object"]
        if isinstance(body, dict) and not problems:
            problems = self._deep_problems(body)
        if problems:
            return self._error(400, "; ".join(problems), rid)
        announced = self._take(key)
        if announced is None:
            message = "Number of requests has exceeded your rate limit"
            status, extra, text = self._error(429, message, rid)
            wait = 60.0 / (self.requests_per_minute or 60.0)
            return status, [*extra, ("retry-after", f"{max(1, round(wait))}")], text
        return json_answer(200, self._message(body, rid), *announced)

    def _take(self, key: str) -> list[tuple[str, str]] | None:
        """One request from the key's bucket: the headers announcing it, None when empty."""
        if self.requests_per_minute is None:
            return []
        limit = self.requests_per_minute
        now = time.time()
        level, at = self._buckets.get(key, (limit, now))
        level = min(limit, level + (now - at) * limit / 60.0)
        if level < 1:
            self._buckets[key] = (level, now)
            self.limited += 1
            return None
        level -= 1
        self._buckets[key] = (level, now)
        full_at = now + (limit - level) * 60.0 / limit
        reset = datetime.fromtimestamp(full_at, timezone.utc).isoformat().replace("+00:00", "Z")
        return [
            ("anthropic-ratelimit-requests-limit", f"{limit:g}"),
            ("anthropic-ratelimit-requests-remaining", str(int(level))),
            ("anthropic-ratelimit-requests-reset", reset),
        ]

    def _deep_problems(self, body: dict[str, Any]) -> list[str]:
        """What a flat shape cannot say: content blocks, images, tool choice, system."""
        out: list[str] = []
        if not body["messages"]:
            out.append("body.messages: at least one message is required")
        system = body.get("system")
        if isinstance(system, list):
            for i, block in enumerate(system):
                out.extend(problems_of(block, TEXT_BLOCK, f"body.system.{i}"))
        last = len(body["messages"]) - 1
        for i, message in enumerate(body["messages"]):
            content = message["content"]
            if content in ("", []) and not (i == last and message["role"] == "assistant"):
                out.append(
                    f"body.messages.{i}: all messages must have non-empty content except for "
                    "the optional final assistant message"
                )
            if isinstance(content, list):
                for j, block in enumerate(content):
                    out.extend(_block_problems(block, f"body.messages.{i}.content.{j}"))
        choice = body.get("tool_choice")
        if choice is not None and not body.get("tools"):
            out.append("body.tool_choice: tool_choice may only be specified while providing tools")
        if choice is not None and choice["type"] == "tool":
            names = [t["name"] for t in body.get("tools") or []]
            if choice.get("name") not in names:
                out.append(f"body.tool_choice.name: no tool named {choice.get('name')!r}")
        return out

    def _message(self, body: dict[str, Any], rid: str) -> dict[str, Any]:
        text = "echo: " + _last_user_text(body) if self.reply is None else self.reply(body)
        words = text.split()
        stop_reason, stop_sequence = "end_turn", None
        for seq in body.get("stop_sequences") or []:
            at = text.find(seq)
            if at >= 0 and (stop_sequence is None or at < text.find(stop_sequence)):
                stop_reason, stop_sequence = "stop_sequence", seq
        if stop_sequence is not None:
            text = text[: text.find(stop_sequence)]
            words = text.split()
        if len(words) > body["max_tokens"]:
            words = words[: body["max_tokens"]]
            text, stop_reason, stop_sequence = " ".join(words), "max_tokens", None
        choice = body.get("tool_choice") or {}
        content: list[dict[str, Any]]
        if choice.get("type") in ("any", "tool") and stop_reason != "max_tokens":
            name = choice.get("name") or body["tools"][0]["name"]
            try:
                arguments = json.loads(text)
            except ValueError:
                arguments = {"text": text}
            if not isinstance(arguments, dict):
                arguments = {"value": arguments}
            content = [
                {"type": "tool_use", "id": "toolu_" + rid[4:], "name": name, "input": arguments}
            ]
            stop_reason = "tool_use"
        else:
            content = [{"type": "text", "text": text}]
        return {
            "id": "msg_" + rid[4:],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": _prompt_tokens(body),
                "cache_creation_input_tokens": self.cache_creation_tokens,
                "cache_read_input_tokens": self.cache_read_tokens,
                "output_tokens": len(words),
                "service_tier": "standard",
            },
        }


def _block_problems(block: Any, where: str) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: expected an object"]
    kind = block.get("type")
    if kind == "text":
        return problems_of(block, TEXT_BLOCK, where)
    if kind == "image":
        problems = problems_of(block, {"type": str, "source": dict, "cache_control?": dict}, where)
        source = block.get("source") or {}
        if problems or not isinstance(source, dict):
            return problems
        if source.get("type") == "url":
            return problems_of(source, URL_SOURCE, where + ".source")
        problems = problems_of(source, BASE64_SOURCE, where + ".source")
        if problems:
            return problems
        try:
            data = base64.b64decode(source["data"], validate=True)
        except (binascii.Error, ValueError):
            return [f"{where}.source.data: invalid base64 data"]
        if sniff(data) != source["media_type"]:
            return [f"{where}.source: image does not match the provided media type"]
        return []
    if kind == "tool_use":
        return problems_of(block, {"type": str, "id": str, "name": str, "input": dict}, where)
    if kind == "tool_result":
        shape = {"type": str, "tool_use_id": str, "content?": (str, list), "is_error?": bool}
        return problems_of(block, shape, where)
    return [f"{where}.type: unknown content block type {kind!r}"]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return "".join(b.get("text", "") for b in content if b.get("type") == "text")
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    """One token per word of the system text and every text block (images count 100)."""
    system = body.get("system") or ""
    if isinstance(system, list):
        system = " ".join(str(b.get("text", "")) for b in system)
    total = len(system.split())
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            total += len(content.split())
            continue
        for block in content:
            total += (
                100 if block.get("type") == "image" else len(str(block.get("text", "")).split())
            )
    return max(total, 1)


if __name__ == "__main__":
    sys.exit(serve(FakeAnthropic))
