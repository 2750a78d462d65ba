"""Chat Completions read as server-sent events (``generation.stream: true``), put back together
into the body a non-streamed call returns, so everything after (reply, postprocessing, the row)
is the same as without streaming.

Why stream at all: a reasoning model may think for minutes before the first token and then
write for minutes more. Streamed, the answer arrives as events, and ``run.timeout_s`` bounds the
wait for each next one (an idle timeout in llmrun's transports), so a long answer that keeps
coming is not cut by one total timeout, while a stalled one still is. The row also gets
``response.first_token_s``.

The events are the server's and untrusted: each ``data:`` line must be a JSON object; an
``error`` event is the server's error; a stream without ``[DONE]`` or a finish reason is cut
(retried like a dropped connection). Text is gathered per choice; tool calls by index, their
arguments concatenated, as OpenAI sends them in pieces.
"""

from __future__ import annotations

import json
from typing import Any

from llmrun import CallError, bad_body, classify_http

EVENT_STREAM = "text/event-stream"


def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and str(content_type).split(";")[0].strip().lower() == EVENT_STREAM


def assemble(content: bytes, status: int) -> dict[str, Any]:
    """The chat.completion body the events of ``content`` add up to."""
    choices: dict[int, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    done = False
    for raw in content.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line.startswith(b"data:"):
            continue  # comments (": keep-alive"), event names, blank separators
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise bad_body("a streamed event is not JSON", status) from None
        if not isinstance(event, dict):
            raise bad_body("a streamed event is not a JSON object", status)
        if "error" in event:
            raise _stream_error(event["error"], status)
        for key in ("id", "model", "created", "system_fingerprint", "service_tier"):
            if event.get(key) is not None:
                top[key] = event[key]
        if event.get("usage"):
            top["usage"] = event["usage"]
        for delta_choice in event.get("choices") or []:
            if not isinstance(delta_choice, dict):
                continue
            index = int(delta_choice.get("index") or 0)
            choice = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant"}, "finish_reason": None}
            )
            _add_delta(choice["message"], delta_choice.get("delta") or {})
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]
            if delta_choice.get("logprobs"):
                content_lp = (delta_choice["logprobs"] or {}).get("content") or []
                choice.setdefault("logprobs", {"content": []})["content"].extend(content_lp)
    if not choices or not (done or all(c["finish_reason"] for c in choices.values())):
        # Cut short: the connection ended between events. Nothing usable, try again.
        raise CallError(
            "the streamed answer ended before it was complete",
            kind="retryable",
            code="stream_cut",
            status=status,
        )
    body = {**top, "object": "chat.completion", "choices": [choices[i] for i in sorted(choices)]}
    for choice in body["choices"]:
        calls = choice["message"].get("tool_calls")
        if calls is not None:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
    return body


def _add_delta(message: dict[str, Any], delta: Any) -> None:
    if not isinstance(delta, dict):
        return
    for key in ("content", "refusal", "reasoning_content"):
        piece = delta.get(key)
        if isinstance(piece, str):
            message[key] = (message.get(key) or "") + piece
    if "content" not in message and "content" in delta:
        message["content"] = delta["content"]  # a null content stays null
    for call in delta.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        calls: dict[int, dict[str, Any]] = message.setdefault("tool_calls", {})
        slot = calls.setdefault(
            int(call.get("index") or 0),
            {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            slot["function"]["arguments"] += function["arguments"]


def _stream_error(error: Any, status: int) -> CallError:
    """An ``error`` event: classified as the same error in a response's status would be (a
    stream says 200 before it fails: the error's own code or type decides)."""
    if not isinstance(error, dict):
        return classify_http(500, str(error)[:300], {})
    code = error.get("code") or error.get("type")
    as_status = {"rate_limit_exceeded": 429, "invalid_request_error": 400}.get(str(code), 500)
    return classify_http(as_status, str(error.get("message") or "")[:300], {}, code=code)
