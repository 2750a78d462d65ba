"""A fake Gemini API on 127.0.0.1 for tests (``POST /v1beta/models/{model}:generateContent``).

It checks what the real API checks: the key (``x-goog-api-key`` header or ``?key=``; a wrong
key gets the API's ``400 INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``, a missing one
``403 PERMISSION_DENIED``), and the body field by field against the documented request shape
(``contents`` with roles ``user``/``model`` and parts, ``systemInstruction``,
``generationConfig`` fields and types, ``responseSchema`` in the OpenAPI subset with upper-case
types, ``inline_data`` whose base64 bytes match their mime type, tools and ``toolConfig``).
Errors are Google-shaped: ``{"error": {"code", "message", "status", "details"?}}``.

The reply text is ``"echo: <last user text>"`` (or what ``reply(body)`` returns), once per
``candidateCount``; with ``toolConfig`` mode ``ANY`` the answer is a ``functionCall`` whose
args are the reply text parsed as a JSON object. ``maxOutputTokens`` cuts it (one token per
word) with ``finishReason: MAX_TOKENS``. ``block_prompt(body)`` returning a reason (e.g.
``"SAFETY"``) answers with ``promptFeedback.blockReason`` and no candidates, as the API does.

On its own: ``python -m llmrun.testing.fake_gemini --port 0 [--latency S]`` prints its base URL
and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from collections.abc import Callable
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

__all__ = ["FakeGemini", "Fault", "RecordedRequest"]

STATUSES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")
SCHEMA_TYPES = ("STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL")


def _number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else "Invalid value (expected a number)"


def _int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return None if ok else "Invalid value (expected an integer)"


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"Invalid value {value!r}"

    return check


def _schema(value: Any) -> str | None:
    """A responseSchema/parameters Schema: only the OpenAPI subset Gemini documents."""
    if not isinstance(value, dict):
        return "Schema must be an object"
    allowed = {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }  # fmt: skip
    for key, sub in value.items():
        if key not in allowed:
            return f'Unknown name "{key}": Cannot find field.'
        if key == "type" and sub not in SCHEMA_TYPES and str(sub).upper() not in SCHEMA_TYPES:
            return f"Invalid value at 'type' ({sub!r})"
        nested: list[Any] = []
        if key == "properties" and isinstance(sub, dict):
            nested = list(sub.values())
        elif key == "items":
            nested = [sub]
        elif key == "anyOf" and isinstance(sub, list):
            nested = sub
        for item in nested:
            problem = _schema(item)
            if problem:
                return problem
    return None


BLOB = {"mime_type": str, "data": str}
FILE = {"mime_type?": str, "file_uri": str}
PART = {
    "text?": str,
    "inline_data?": BLOB,
    "file_data?": FILE,
    "functionCall?": {"name": str, "args?": dict, "id?": str},
    "functionResponse?": {"name": str, "response": dict, "id?": str},
    "thought?": bool,
}
GENERATION_CONFIG = {
    "temperature?": _number,
    "topP?": _number,
    "topK?": _int,
    "maxOutputTokens?": _int,
    "stopSequences?": [str],
    "candidateCount?": _int,
    "seed?": _int,
    "presencePenalty?": _number,
    "frequencyPenalty?": _number,
    "responseLogprobs?": bool,
    "logprobs?": _int,
    "responseMimeType?": _one_of("text/plain", "application/json", "text/x.enum"),
    "responseSchema?": _schema,
    "thinkingConfig?": {"thinkingBudget?": _int, "includeThoughts?": bool, "thinkingLevel?": str},
}
BODY = {
    "contents": [{"role?": _one_of("user", "model"), "parts": [PART]}],
    "systemInstruction?": {"role?": str, "parts": [{"text": str}]},
    "generationConfig?": GENERATION_CONFIG,
    "tools?": [
        {"functionDeclarations": [{"name": str, "description?": str, "parameters?": _schema}]}
    ],
    "toolConfig?": {
        "functionCallingConfig": {
            "mode": _one_of("AUTO", "ANY", "NONE", "VALIDATED"),
            "allowedFunctionNames?": [str],
        }
    },
    "safetySettings?": [{"category": str, "threshold": str}],
    "cachedContent?": str,
}


class FakeGemini(FakeServer):
    """A fake Gemini generateContent endpoint (see the module docstring).

    ``cached_tokens`` and ``thoughts_tokens`` are reported in every reply's ``usageMetadata``
    (``promptTokenCount`` includes the cached tokens, as the API counts them).
    """

    def __init__(
        self,
        *,
        cached_tokens: int = 0,
        thoughts_tokens: int = 0,
        block_prompt: Callable[[Any], str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cached_tokens = cached_tokens
        self.thoughts_tokens = thoughts_tokens
        self.block_prompt = block_prompt

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        grpc = STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        text = message or DEFAULT_MESSAGES.get(status, "Error.")
        body = {"error": {"code": status, "message": text, "status": grpc}}
        return [("content-type", "application/json; charset=UTF-8")], json.dumps(body).encode()

    def _error(self, status: int, message: str, **extra: Any) -> Answer:
        grpc = STATUSES.get(status, "INVALID_ARGUMENT")
        return json_answer(
            status, {"error": {"code": status, "message": message, "status": grpc, **extra}}
        )

    def _answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any, rid: str
    ) -> Answer:
        match = PATH.match(path)
        if match is None or method != "POST":
            return self._error(404, f"Method not found: {method} {path}")
        model = match.group(2)
        key = headers.get("x-goog-api-key") or dict(
            p.partition("=")[::2] for p in query.split("&") if p
        ).get("key")
        if not key:
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if self.api_keys is not None and key not in self.api_keys:
            return self._error(
                400,
                "API key not valid. Please pass a valid API key.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        problems = problems_of(body, BODY, "body") if isinstance(body, dict) else ["body: object"]
        if isinstance(body, dict) and not problems:
            problems = _deep_problems(body)
        if problems:
            return self._error(400, "Invalid JSON payload received. " + "; ".join(problems))
        return json_answer(200, self._generate(model, body, rid))

    def _generate(self, model: str, body: dict[str, Any], rid: str) -> dict[str, Any]:
        prompt_tokens = _prompt_tokens(body) + self.cached_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt_tokens}
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        base = {"modelVersion": model, "responseId": rid[4:]}
        reason = self.block_prompt(body) if self.block_prompt is not None else None
        if reason:
            feedback = {
                "blockReason": reason,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                ],
            }
            usage["totalTokenCount"] = prompt_tokens
            return {"promptFeedback": feedback, "usageMetadata": usage, **base}
        text = "echo: " + _last_user_text(body) if self.reply is None else self.reply(body)
        config = body.get("generationConfig") or {}
        words = text.split()
        finish = "STOP"
        limit = config.get("maxOutputTokens")
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "MAX_TOKENS"
            text = " ".join(words)
        mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        part: dict[str, Any]
        if mode == "ANY" and body.get("tools") and finish == "STOP":
            allowed = body["toolConfig"]["functionCallingConfig"].get("allowedFunctionNames")
            name = allowed[0] if allowed else body["tools"][0]["functionDeclarations"][0]["name"]
            try:
                args = json.loads(text)
            except ValueError:
                args = {"text": text}
            part = {"functionCall": {"name": name, "args": args if isinstance(args, dict) else {}}}
        else:
            part = {"text": text}
        n = config.get("candidateCount", 1)
        candidates = [
            {
                "content": {"parts": [part], "role": "model"},
                "finishReason": finish,
                "index": i,
            }
            for i in range(n)
        ]
        usage["candidatesTokenCount"] = len(words) * n
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        usage["totalTokenCount"] = prompt_tokens + len(words) * n + self.thoughts_tokens
        return {"candidates": candidates, "usageMetadata": usage, **base}


def _deep_problems(body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if not body["contents"]:
        out.append("body.contents: must not be empty")
    for i, content in enumerate(body["contents"]):
        for j, part in enumerate(content["parts"]):
            where = f"body.contents[{i}].parts[{j}]"
            data_fields = [k for k in ("text", "inline_data", "file_data", "functionCall",
                                       "functionResponse") if k in part]  # fmt: skip
            if len(data_fields) != 1:
                out.append(f"{where}: a part holds exactly one of text, inline_data, ...")
            if part.get("text") == "":
                out.append(
                    f"{where}: Unable to submit request because it has an empty text parameter."
                )
            blob = part.get("inline_data")
            if blob is not None:
                try:
                    data = base64.b64decode(blob["data"], validate=True)
                except (binascii.Error, ValueError):
                    out.append(f"{where}.inline_data.data: invalid base64")
                    continue
                if sniff(data) != blob["mime_type"]:
                    out.append(f"{where}.inline_data: the data is not {blob['mime_type']}")
    config = body.get("generationConfig") or {}
    if "responseSchema" in config and config.get("responseMimeType") != "application/json":
        out.append("generationConfig.responseSchema needs responseMimeType application/json")
    if config.get("candidateCount", 1) < 1 or config.get("candidateCount", 1) > 8:
        out.append("generationConfig.candidateCount: must be between 1 and 8")
    return out


def _last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body["contents"]):
        if content.get("role", "user") == "user":
            return "".join(p.get("text", "") for p in content["parts"])
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    """One token per word of text (an image counts 258, as Gemini counts a small image)."""
    total = 0
    for part in (body.get("systemInstruction") or {}).get("parts") or []:
        total += len(part.get("text", "").split())
    for content in body["contents"]:
        for part in content["parts"]:
            total += 258 if "inline_data" in part or "file_data" in part else 0
            total += len(str(part.get("text", "")).split())
    return max(total, 1)


if __name__ == "__main__":
    sys.exit(serve(FakeGemini))
