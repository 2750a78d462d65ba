"""OpenAI-shaped bodies for the fake server: errors as the API writes them, and the
deterministic reply and token counts derived from a request."""

from __future__ import annotations

import functools
from typing import Any

from .. import jsonio
from .http11 import Headers, reason


def dumps(obj: Any) -> bytes:
    """Compact JSON, through orjson: the stdlib's encoder was a tenth of the fake server's CPU
    on realistic prompts, where the server must stay far faster than any client it measures."""
    return jsonio.dumps(obj)


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


# -- /completions, /embeddings, Azure ---------------------------------------------------

FAKE_DIMENSIONS = 8


def fake_vector(text: str, dimensions: int = FAKE_DIMENSIONS) -> list[float]:
    """The fake server's embedding of ``text``: deterministic, different for each text."""
    import hashlib

    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=32).digest()
        out.extend(round(b / 127.5 - 1.0, 6) for b in digest)
        counter += 1
    return out[:dimensions]


def azure_error(status: int, code: str, message: str) -> tuple[int, Headers, bytes]:
    """An error as Azure OpenAI writes it (``{"error": {"code", "message"}}``)."""
    return (
        status,
        [("content-type", "application/json")],
        dumps({"error": {"code": code, "message": message}}),
    )


def completion_answer(body: Any, request_id: str, model: str) -> tuple[int, Headers, bytes]:
    """A ``/completions`` answer: ``"echo: " + prompt``, cut at ``max_tokens`` words."""
    if not isinstance(body, dict):
        return error_json(400, "The request body must be a JSON object.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return error_json(
            400, "Invalid 'prompt': expected a string.", code="invalid_type", param="prompt"
        )
    n = body.get("n", 1)
    limit = body.get("max_tokens")
    if not positive_int(n) or (limit is not None and not positive_int(limit)):
        return error_json(400, "Invalid 'n' or 'max_tokens'.", code="invalid_value")
    words = ("echo: " + prompt).split()
    finish = "stop"
    if limit is not None and limit < len(words):
        words, finish = words[:limit], "length"
    prompt_tokens = len(prompt.split())
    response = {
        "id": "cmpl-" + request_id[4:],
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": body.get("model") or model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {"text": " ".join(words), "index": i, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words) * n,
            "total_tokens": prompt_tokens + len(words) * n,
        },
    }
    return 200, [("content-type", "application/json")], dumps(response)


def embeddings_answer(body: Any, model: str) -> tuple[int, Headers, bytes]:
    """An ``/embeddings`` answer: one ``fake_vector`` per input, in order."""
    if not isinstance(body, dict):
        return error_json(400, "The request body must be a JSON object.")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        return error_json(
            400,
            "'input' : input must be a string or an array of strings",
            code="invalid_type",
            param="input",
        )
    if any(t == "" for t in inputs):
        return error_json(
            400, "'$.input' is invalid. Please check the API reference.", param="input"
        )
    dimensions = body.get("dimensions", FAKE_DIMENSIONS)
    if not positive_int(dimensions):
        return error_json(400, "Invalid 'dimensions'.", code="invalid_value", param="dimensions")
    tokens = sum(len(t.split()) for t in inputs)
    response = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": fake_vector(t, dimensions)}
            for i, t in enumerate(inputs)
        ],
        "model": body.get("model") or model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return 200, [("content-type", "application/json")], dumps(response)
