"""The ``gemini`` provider: Google's Gemini API ``generateContent``.

``POST {base_url}/{api_version}/models/{model}:generateContent`` with the key in the
``x-goog-api-key`` header. System and developer messages become ``systemInstruction``; user and
assistant turns become ``contents`` with roles ``user`` and ``model``; generation keys go into
``generationConfig``. A blocked prompt (``promptFeedback.blockReason``) or a candidate stopped
for safety is a record-level error naming the reason. Usage: ``output_tokens`` counts the
candidates and the thinking tokens (both are billed as output); ``reasoning_tokens`` the
thinking tokens; ``cached_tokens`` the cached part of ``promptTokenCount``.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from llmrun import (
    CallError,
    ComponentContext,
    Dropper,
    ImageError,
    KeyedRequests,
    Prompt,
    Register,
    Reply,
    Transport,
    Usage,
    classify_http,
    content_parts,
    content_text,
    error_json,
    hookimpl,
    json_dumps,
    load_image,
    parse_json,
    response_json,
    thaw,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# generationConfig names of the neutral generation keys that map one to one.
CONFIG_NAMES = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "n": "candidateCount",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "logprobs": "responseLogprobs",
    "top_logprobs": "logprobs",
}
# The OpenAPI subset a responseSchema accepts (JSON Schema keywords outside it are dropped).
SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }
)  # fmt: skip
TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


class GeminiGenerate:
    """POST {base_url}/{api_version}/models/{model}:generateContent with ``x-goog-api-key``."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "base_url": {
                "type": "string",
                "default": DEFAULT_BASE_URL,
                "pattern": "^https?://",
                "description": "Without the API version: the provider appends it.",
            },
            "api_version": {"type": "string", "default": "v1beta"},
            "safety_settings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["category", "threshold"],
                    "properties": {"category": {"type": "string"}, "threshold": {"type": "string"}},
                },
                "description": "Sent as safetySettings, e.g. "
                "[{category: HARM_CATEGORY_HARASSMENT, threshold: BLOCK_ONLY_HIGH}].",
            },
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra HTTP headers sent with every request.",
            },
            "extra_body": {
                "type": "object",
                "description": "Merged into every request body (generationConfig merged key by "
                "key, e.g. {generationConfig: {thinkingConfig: {thinkingBudget: 0}}}).",
            },
        },
    }

    @classmethod
    def key_endpoint(cls, options: Mapping[str, Any]) -> str:
        """Where the keys go (read by the recipe loader: plan and the run's start show it)."""
        return str(options.get("base_url") or DEFAULT_BASE_URL)

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.model = str(options["model"]).removeprefix("models/")
        base = str(options.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        version = str(options.get("api_version") or "v1beta").strip("/")
        self.url = httpx.URL(f"{base}/{version}/models/{self.model}:generateContent")
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update({k.lower(): str(v) for k, v in (options.get("headers") or {}).items()})
        self._headers = KeyedRequests(self.url, headers, lambda key: {"x-goog-api-key": key})
        self._safety = thaw(options.get("safety_settings") or [])
        self._extra_body = thaw(options.get("extra_body") or {})
        self._dropper = Dropper("gemini", context.warn)
        self._wants_json = False  # set by body(): JSON was requested, so replies get ``parsed``

    # -- request ------------------------------------------------------------------

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The generateContent request body (also what batch mode sends per request)."""
        gen = thaw(prompt.generation)
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        for message in prompt.messages:
            role = message.get("role")
            if role in ("system", "developer"):
                system.append(content_text(message.get("content")))
            elif role == "assistant" and message.get("content") in ("", None, []):
                continue  # the API refuses an empty text part (an empty reply being reasked)
            else:
                parts = self._parts(message.get("content"))
                contents.append(
                    {"role": "model" if role == "assistant" else "user", "parts": parts}
                )
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config: dict[str, Any] = {}
        for key, name in CONFIG_NAMES.items():
            if key in gen:
                config[name] = gen[key]
        limit = gen.get("max_completion_tokens") or gen.get("max_tokens")
        if limit:
            config["maxOutputTokens"] = limit
        if "stop" in gen:
            config["stopSequences"] = [gen["stop"]] if isinstance(gen["stop"], str) else gen["stop"]
        if "reasoning_effort" in gen:
            self._dropper.drop(
                "reasoning_effort",
                "set extra_body: {generationConfig: {thinkingConfig: ...}} instead",
            )
        fmt = gen.get("response_format")
        if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
            self._wants_json = True
            config["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema is not None:
                dropped: set[str] = set()
                config["responseSchema"] = response_schema(schema, dropped)
                for keyword in sorted(dropped):
                    self._dropper.drop(
                        f"response_format schema keyword {keyword!r}",
                        "Gemini's responseSchema is an OpenAPI subset",
                    )
        if config:
            body["generationConfig"] = config
        tools = [_declaration(t) for t in gen.get("tools") or []]
        if tools:
            body["tools"] = [{"functionDeclarations": tools}]
        if "tool_choice" in gen and tools:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(gen["tool_choice"])}
        if self._safety:
            body["safetySettings"] = self._safety
        for key, value in self._extra_body.items():
            if key == "generationConfig" and isinstance(value, dict):
                body["generationConfig"] = {**body.get("generationConfig", {}), **value}
            else:
                body[key] = value
        return body

    def _parts(self, content: Any) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for part in content_parts(content):
            if part.get("type") != "image":
                parts.append({"text": str(part.get("text", ""))})
                continue
            image = load_image(str(part.get("source", "")))
            if image.url is not None:
                media_type = image.media_type or mimetypes.guess_type(image.url)[0]
                if not media_type:
                    raise ImageError(
                        f"image URL {image.url} has no recognisable image type: gemini needs "
                        "the mime type of a file_data URI (use a local path or a data: URL)"
                    )
                parts.append({"file_data": {"mime_type": media_type, "file_uri": image.url}})
            else:
                parts.append({"inline_data": {"mime_type": image.media_type, "data": image.b64()}})
        return parts

    def build_request(self, prompt: Prompt, api_key: str | None) -> httpx.Request:
        return self._headers.post(json_dumps(self.body(prompt)), api_key)

    # -- response -----------------------------------------------------------------

    def parse_response(self, response: httpx.Response) -> Reply:
        if response.status_code >= 300:
            raise error_from(response)
        return self.reply_from_body(response_json(response, "Gemini response"))

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """A successful generateContent body as a ``Reply``; a blocked prompt or a reply stopped
        for safety raises a record-level ``CallError`` (``content_filter``) with the reason."""
        feedback = data.get("promptFeedback") or {}
        candidates = data.get("candidates") or []
        if feedback.get("blockReason"):
            raise _blocked("the prompt was blocked", feedback.get("blockReason"), feedback)
        if not candidates:
            raise CallError("the reply has no candidates", kind="record", code="no_candidates")
        texts: list[str | None] = []
        calls: list[dict[str, Any]] = []
        for i, candidate in enumerate(candidates):
            reason = candidate.get("finishReason")
            if i == 0 and FINISH_REASONS.get(reason) == "content_filter":
                raise _blocked("the reply was blocked", reason, candidate)
            pieces: list[str] = []
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "text" in part and not part.get("thought"):
                    pieces.append(str(part["text"]))
                elif "functionCall" in part and i == 0:
                    call = part["functionCall"]
                    calls.append(
                        {
                            "id": call.get("id") or f"call_{len(calls)}",
                            "name": call.get("name"),
                            "arguments": call.get("args") or {},
                        }
                    )
            texts.append("".join(pieces) if pieces or not calls else None)
        reason = candidates[0].get("finishReason")
        finish = FINISH_REASONS.get(reason, "other") if reason else None
        if calls and finish == "stop":
            finish = "tool_calls"
        usage = data.get("usageMetadata") or {}
        prompt_tokens = usage.get("promptTokenCount")
        if prompt_tokens is not None and usage.get("toolUsePromptTokenCount"):
            prompt_tokens += usage["toolUsePromptTokenCount"]
        thoughts = usage.get("thoughtsTokenCount")
        output = usage.get("candidatesTokenCount")
        if output is not None or thoughts is not None:
            output = (output or 0) + (thoughts or 0)
        text = texts[0]
        return Reply(
            text=text,
            finish_reason=finish,
            usage=Usage(
                input_tokens=prompt_tokens,
                output_tokens=output,
                cached_tokens=usage.get("cachedContentTokenCount"),
                reasoning_tokens=thoughts,
            ),
            model=data.get("modelVersion"),
            request_id=data.get("responseId"),
            choices=texts if len(texts) > 1 else None,
            tool_calls=calls or None,
            parsed=parse_json(text) if self._wants_json else None,
            raw=data,
        )

    def transport(self) -> Transport | None:
        return None


def response_schema(schema: Any, dropped: set[str]) -> Any:
    """A JSON Schema as Gemini's responseSchema (OpenAPI subset): types upper-cased, a
    ``[type, "null"]`` pair as ``nullable``, ``const`` as a one-value ``enum``; keywords outside
    the subset are left out and named in ``dropped``."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            types = [value] if isinstance(value, str) else list(value)
            if "null" in types:
                out["nullable"] = True
                types.remove("null")
            if types:
                out["type"] = str(types[0]).upper()
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties" and isinstance(value, Mapping):
            out[key] = {name: response_schema(sub, dropped) for name, sub in value.items()}
        elif key == "items":
            out[key] = response_schema(value, dropped)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [response_schema(sub, dropped) for sub in value]
        elif key in SCHEMA_KEYS:
            out[key] = value
        else:
            dropped.add(key)
    return out


def _declaration(tool: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as a Gemini function declaration."""
    function = tool.get("function") or tool
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parameters"] = response_schema(function["parameters"], set())
    return out


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    return {"mode": TOOL_MODES.get(str(choice), "AUTO")}


def _blocked(what: str, reason: Any, source: Mapping[str, Any]) -> CallError:
    """The record error for a safety block, naming the reason and the categories rated high."""
    ratings = [
        f"{r.get('category')}: {r.get('probability')}"
        for r in source.get("safetyRatings") or []
        if r.get("blocked") or r.get("probability") in ("MEDIUM", "HIGH")
    ]
    detail = f" ({', '.join(ratings)})" if ratings else ""
    return CallError(f"{what}: {reason}{detail}", kind="record", code="content_filter")


def error_from(response: httpx.Response) -> CallError:
    """The classified error for a failed generateContent response."""
    data = error_json(response)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return classify_http(response.status_code, response.text[:300].strip(), response.headers)
    status = response.status_code
    grpc = str(error.get("status") or "")
    message = str(error.get("message") or "")
    detail = f"{grpc}: {message}" if grpc else message
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {str(d.get("reason")) for d in details if d.get("reason")}
    text = f"HTTP {status}: {detail}"
    if "API_KEY_INVALID" in reasons or "API key not valid" in message:
        return CallError(text, kind="key", code="auth", status=status)
    if grpc == "FAILED_PRECONDITION":  # e.g. the API is not available in the caller's region
        return CallError(text, kind="run", code="precondition", status=status)
    if status == 429:
        quotas = [
            str(v.get("quotaId", ""))
            for d in details
            for v in d.get("violations") or []
            if isinstance(v, dict)
        ]
        if any("PerDay" in q for q in quotas):
            return CallError(text, kind="key", code="quota", status=status)
        delay = next((_seconds(d.get("retryDelay")) for d in details if "retryDelay" in d), None)
        if delay is not None and "retry-after" not in response.headers:
            return CallError(
                text, kind="retryable", code="rate_limit", status=status, retry_after=delay
            )
    return classify_http(status, detail, response.headers, code=grpc or None)


def _seconds(value: Any) -> float | None:
    """A protobuf Duration string ("17s", "0.5s") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(value or ""))
    return float(match.group(1)) if match else None


@hookimpl
def register_providers(register: Register) -> None:
    register("gemini", GeminiGenerate)
