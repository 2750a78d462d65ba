"""OpenAI-shaped bodies for the fake server: errors as the API writes them, and the
deterministic reply and token counts derived from a request."""

from __future__ import annotations

import functools
import json
from typing import Any

from .http11 import Headers, reason


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_json(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> tuple[int, Headers, bytes]:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return status, [("content-type", "application/json")], dumps(body)


DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The requested resource does not exist.", "invalid_request_error", None),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict.", "invalid_request_error", None),
    413: ("Request too large.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


@functools.lru_cache(maxsize=64)
def default_error_body(status: int) -> bytes:
    if status in DEFAULT_ERRORS:
        message, type_, code = DEFAULT_ERRORS[status]
    elif status >= 500:
        message, type_, code = DEFAULT_ERRORS[500]
    else:
        message, type_, code = f"{reason(status)}.", "invalid_request_error", None
    return error_json(status, message, type_, code)[2]


def mask_key(key: str) -> str:
    """Mask an API key the way OpenAI does; never returns the full key."""
    if len(key) < 12:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def text_of(content: Any) -> str:
    """Text of a message ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


def echo_reply(body: Any) -> str:
    """Default reply: ``"echo: "`` + the text of the last user message."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + text_of(message.get("content"))
    return "echo: "


def count_prompt_tokens(messages: list[Any]) -> int:
    return sum(len(text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
