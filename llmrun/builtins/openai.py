"""The ``openai`` provider: Chat Completions on OpenAI or any OpenAI-compatible server."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from ..components import Transport
from ..errors import CallError
from ..failures import bad_body, classify_http
from ..hookspecs import Register, hookimpl
from ..recipe import thaw
from ..values import ComponentContext, Prompt, Reply, Usage

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIChat:
    """POST {base_url}/chat/completions with a bearer key; replies normalized to ``Reply``."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "base_url": {
                "type": "string",
                "default": "https://api.openai.com/v1",
                "pattern": "^https?://",
                "description": "Any OpenAI-compatible server (vLLM, Ollama, ...).",
            },
            "organization": {"type": "string"},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra HTTP headers sent with every request.",
            },
            "extra_body": {
                "type": "object",
                "description": "Merged into every request body (server-specific parameters).",
            },
        },
    }
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.model = str(options["model"])
        base = str(options.get("base_url") or self.default_base_url).rstrip("/")
        self.url = httpx.URL(base + "/chat/completions")
        extra_headers = {"content-type": "application/json", "accept": "application/json"}
        if options.get("organization"):
            extra_headers["openai-organization"] = str(options["organization"])
        extra_headers.update({k.lower(): str(v) for k, v in (options.get("headers") or {}).items()})
        self._base_headers = extra_headers
        self._headers_by_key: dict[str | None, httpx.Headers] = {}
        self._extra_body = thaw(options.get("extra_body") or {})

    def _headers(self, api_key: str | None) -> httpx.Headers:
        headers = self._headers_by_key.get(api_key)
        if headers is None:
            values = dict(self._base_headers)
            if api_key:
                values["authorization"] = f"Bearer {api_key}"
            headers = self._headers_by_key[api_key] = httpx.Headers(values)
        return headers

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body (also what batch mode writes per line)."""
        body: dict[str, Any] = {"model": self.model, "messages": prompt.messages}
        body.update(prompt.generation)
        body.update(self._extra_body)
        return body

    def build_request(self, prompt: Prompt, api_key: str | None) -> httpx.Request:
        # backslashreplace: a lone surrogate from the input goes out as its JSON escape.
        content = json.dumps(self.body(prompt), ensure_ascii=False).encode(
            "utf-8", "backslashreplace"
        )
        return httpx.Request("POST", self.url, headers=self._headers(api_key), content=content)

    def parse_response(self, response: httpx.Response) -> Reply:
        status = response.status_code
        if status >= 300:
            raise error_from(response)
        try:
            data = json.loads(response.content)
            reply = self.reply_from_body(data)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise bad_body(
                f"{type(exc).__name__} reading chat completion ({len(response.content)} bytes)",
                status,
            ) from None
        reply.request_id = response.headers.get("x-request-id") or reply.request_id
        return reply

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """A successful chat completion body as a Reply (raises KeyError/TypeError/... when the
        body is not one); batch mode parses its result lines with it."""
        choices = data["choices"]
        first = choices[0]
        texts = [(c.get("message") or {}).get("content") for c in choices]
        usage = data.get("usage") or {}
        details_in = usage.get("prompt_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or {}
        raw_finish = first.get("finish_reason")
        return Reply(
            text=texts[0],
            finish_reason=FINISH_REASONS.get(raw_finish, "other") if raw_finish else None,
            usage=Usage(
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
                cached_tokens=details_in.get("cached_tokens"),
                reasoning_tokens=details_out.get("reasoning_tokens"),
            ),
            model=data.get("model"),
            request_id=data.get("id"),
            choices=texts if len(texts) > 1 else None,
            raw=data,
        )

    def batch_api(self) -> Any:
        """The OpenAI Batch API for this provider's endpoint (``llmrun.batch.contract``)."""
        from ..batch.openai import OpenAIBatches

        return OpenAIBatches(self, str(self.url).rsplit("/chat/completions", 1)[0], self._headers)

    def transport(self) -> Transport | None:
        return None


def _error_details(response: httpx.Response) -> tuple[str, str | None]:
    """The provider's error message and code, from an OpenAI-shaped error body if there is
    one, else the start of the body."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return response.text[:300].strip(), None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(error.get("message") or ""), str(code) if code else None
    if isinstance(error, str):
        return error, None
    return json.dumps(data)[:300], None


def error_from(response: httpx.Response) -> CallError:
    """The classified error for a failed response (for providers sharing this wire format)."""
    message, code = _error_details(response)
    return classify_http(response.status_code, message, response.headers, code=code)


@hookimpl
def register_providers(register: Register) -> None:
    register("openai", OpenAIChat)
