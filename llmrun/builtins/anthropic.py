"""The ``anthropic`` provider: Anthropic's Messages API (``POST {base_url}/v1/messages``).

System and developer messages become the top-level ``system``; ``max_tokens`` (required by the
API) comes from the recipe's generation, else the ``max_tokens`` option. OpenAI-format tools
become Anthropic tools; ``response_format`` asking for JSON becomes one forced tool named
``structured_output`` whose input is the structured answer (``Reply.parsed``; ``Reply.text`` is
that input as JSON). Usage: ``input_tokens`` is the whole prompt (Anthropic's ``input_tokens``
plus cache reads and cache writes), ``cached_tokens`` the cache reads, so cost counts cache reads
at the cached price (cache writes at the plain input price).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

import httpx

from llmrun import (
    CallError,
    ComponentContext,
    Dropper,
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
    response_json,
    thaw,
)

STRUCTURED_TOOL = "structured_output"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Generation keys the Messages API has no field for (thinking is reachable through extra_body).
UNSUPPORTED = (
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
)


class AnthropicMessages:
    """POST {base_url}/v1/messages with ``x-api-key``; replies normalized to ``Reply``."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "base_url": {
                "type": "string",
                "default": "https://api.anthropic.com",
                "pattern": "^https?://",
                "description": "Without /v1: the provider appends /v1/messages.",
            },
            "anthropic_version": {
                "type": "string",
                "default": DEFAULT_VERSION,
                "description": "The anthropic-version header.",
            },
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "default": DEFAULT_MAX_TOKENS,
                "description": "Sent when generation sets neither max_tokens nor "
                "max_completion_tokens (the API requires one).",
            },
            "cache_system": {
                "type": "boolean",
                "default": False,
                "description": "Mark the system prompt for Anthropic's prompt cache "
                "(cache_control: ephemeral), so records sharing it pay the cached price.",
            },
            "beta": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Beta feature names, sent in the anthropic-beta header.",
            },
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra HTTP headers sent with every request.",
            },
            "extra_body": {
                "type": "object",
                "description": "Merged into every request body (e.g. thinking, metadata).",
            },
        },
    }

    @classmethod
    def key_endpoint(cls, options: Mapping[str, Any]) -> str:
        """Where the keys go (read by the recipe loader: plan and the run's start show it)."""
        return str(options.get("base_url") or "https://api.anthropic.com")

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.model = str(options["model"])
        base = str(options.get("base_url") or "https://api.anthropic.com").rstrip("/")
        self.url = httpx.URL(base + "/v1/messages")
        self.max_tokens = int(options.get("max_tokens") or DEFAULT_MAX_TOKENS)
        self.cache_system = bool(options.get("cache_system"))
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": str(options.get("anthropic_version") or DEFAULT_VERSION),
        }
        if options.get("beta"):
            headers["anthropic-beta"] = ",".join(str(b) for b in options["beta"])
        headers.update({k.lower(): str(v) for k, v in (options.get("headers") or {}).items()})
        self._headers = KeyedRequests(self.url, headers, lambda key: {"x-api-key": key})
        self._extra_body = thaw(options.get("extra_body") or {})
        self._dropper = Dropper("anthropic", context.warn)

    # -- request ------------------------------------------------------------------

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The Messages API request body (also what batch mode sends per request)."""
        gen = thaw(prompt.generation)
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        last = len(prompt.messages) - 1
        for i, message in enumerate(prompt.messages):
            role, content = message.get("role"), message.get("content")
            if role in ("system", "developer"):
                system.append(content_text(content))
            elif role == "assistant" and i < last and content in ("", None, []):
                # The API refuses empty turns (an empty reply being reasked); the user turns
                # around it are merged by the API.
                continue
            else:
                messages.append({"role": role, "content": self._content(content)})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": gen.get("max_completion_tokens")
            or gen.get("max_tokens")
            or self.max_tokens,
            "messages": messages,
        }
        if system and self.cache_system:
            text = "\n\n".join(system)
            body["system"] = [
                {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}
            ]
        elif system:
            body["system"] = "\n\n".join(system)
        if "temperature" in gen:
            temperature = gen["temperature"]
            if temperature > 1:
                self._dropper.once(
                    "temperature",
                    f"generation.temperature {temperature} is above anthropic's maximum: sent as 1",
                )
                temperature = 1.0
            body["temperature"] = temperature
        for key in ("top_p", "top_k"):
            if key in gen:
                body[key] = gen[key]
        if "stop" in gen:
            stop = gen["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if gen.get("n", 1) != 1:
            self._dropper.drop("n", "one reply per request")
        self._dropper.drop_all(UNSUPPORTED, gen)
        tools = [_tool(t) for t in gen.get("tools") or []]
        choice = _tool_choice(gen["tool_choice"]) if "tool_choice" in gen else None
        structured = _structured_tool(gen.get("response_format"))
        if structured is not None:
            tools.append(structured)
            choice = {"type": "tool", "name": STRUCTURED_TOOL}
        if tools:
            body["tools"] = tools
        if choice is not None and tools:  # the API refuses a tool_choice without tools
            body["tool_choice"] = choice
        body.update(self._extra_body)
        return body

    def _content(self, content: Any) -> Any:
        if isinstance(content, str):
            return content
        blocks: list[dict[str, Any]] = []
        for part in content_parts(content):
            if part.get("type") == "image":
                image = load_image(str(part.get("source", "")))
                if image.url is not None:
                    source: dict[str, Any] = {"type": "url", "url": image.url}
                else:
                    source = {"type": "base64", "media_type": image.media_type, "data": image.b64()}
                blocks.append({"type": "image", "source": source})
            else:
                blocks.append({"type": "text", "text": str(part.get("text", ""))})
        return blocks

    def build_request(self, prompt: Prompt, api_key: str | None) -> httpx.Request:
        return self._headers.post(json_dumps(self.body(prompt)), api_key)

    # -- response -----------------------------------------------------------------

    def parse_response(self, response: httpx.Response) -> Reply:
        if response.status_code >= 300:
            raise error_from(response)
        reply = self.reply_from_body(response_json(response, "Anthropic message"))
        reply.request_id = response.headers.get("request-id") or reply.request_id
        return reply

    def rate_limit_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``anthropic-ratelimit-requests|tokens-limit|remaining|reset`` in the
        ``x-ratelimit-*`` names the key pool reads (a reset is a time here, seconds there)."""
        named: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            for field in ("limit", "remaining"):
                value = headers.get(f"anthropic-ratelimit-{kind}-{field}")
                if value is not None:
                    named[f"x-ratelimit-{field}-{kind}"] = value
            reset = seconds_until(headers.get(f"anthropic-ratelimit-{kind}-reset"))
            if reset is not None:
                named[f"x-ratelimit-reset-{kind}"] = f"{reset:.3f}"
        return named

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """A successful Messages API body as a ``Reply`` (used for batch results too)."""
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        parsed: Any = None
        for block in data.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use" and block.get("name") == STRUCTURED_TOOL:
                parsed = block.get("input")
            elif kind == "tool_use":
                calls.append(
                    {
                        "id": block.get("id"),
                        "name": block.get("name"),
                        "arguments": block.get("input"),
                    }
                )
        stop = data.get("stop_reason")
        finish = STOP_REASONS.get(stop, "other") if stop else None
        if parsed is not None:
            text: str | None = json.dumps(parsed, ensure_ascii=False)
            if finish == "tool_calls" and not calls:
                finish = "stop"  # the forced structured answer, not a call to run
        else:
            text = "".join(texts) if texts or not calls else None
        usage = data.get("usage") or {}
        fresh = usage.get("input_tokens")
        read = usage.get("cache_read_input_tokens")
        written = usage.get("cache_creation_input_tokens")
        total_in = None if fresh is None else fresh + (read or 0) + (written or 0)
        return Reply(
            text=text,
            finish_reason=finish,
            usage=Usage(
                input_tokens=total_in, output_tokens=usage.get("output_tokens"), cached_tokens=read
            ),
            model=data.get("model"),
            request_id=data.get("id"),
            tool_calls=calls or None,
            parsed=parsed,
            raw=data,
        )

    def batch_api(self) -> Any:
        """Anthropic Message Batches for this endpoint (``llmrun.batch.contract``)."""
        from .anthropic_batches import AnthropicBatches

        base = str(self.url).rsplit("/v1/messages", 1)[0]
        return AnthropicBatches(self, base, self._headers, error_from)

    def transport(self) -> Transport | None:
        return None


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool."""
    function = tool.get("function") or tool
    out: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, Mapping):
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return {"type": {"auto": "auto", "none": "none", "required": "any"}.get(str(choice), "auto")}


def _structured_tool(response_format: Any) -> dict[str, Any] | None:
    """The forced tool standing for a JSON ``response_format`` (None for plain text)."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {
            "name": STRUCTURED_TOOL,
            "description": "Give your whole answer as a JSON object.",
            "input_schema": {"type": "object"},
        }
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        name = spec.get("name") or "answer"
        return {
            "name": STRUCTURED_TOOL,
            "description": spec.get("description") or f"Give your whole answer as `{name}`.",
            "input_schema": spec.get("schema") or {"type": "object"},
        }
    return None


def seconds_until(stamp: str | None) -> float | None:
    """Seconds from now to an RFC 3339 time (``2026-11-21T10:00:30Z``), at least 0."""
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def error_from(response: httpx.Response) -> CallError:
    """The classified error for a failed Messages API response."""
    data = error_json(response)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        kind, message = str(error.get("type") or ""), str(error.get("message") or "")
    else:
        kind, message = "", response.text[:300].strip()
    status = response.status_code
    detail = f"{kind}: {message}" if kind else message
    if kind == "billing_error" or "credit balance" in message.lower():
        return CallError(f"HTTP {status}: {detail}", kind="key", code="quota", status=status)
    return classify_http(status, detail, response.headers, code=kind or None)


@hookimpl
def register_providers(register: Register) -> None:
    register("anthropic", AnthropicMessages)
