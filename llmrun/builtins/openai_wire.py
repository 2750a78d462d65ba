"""What every OpenAI-shaped provider shares: options, headers, presets, the generation keys a
server accepts, the error body, usage. The wire protocol of each endpoint lives in its own module
(``openai.py`` chat, ``openai_completions.py``, ``openai_embeddings.py``, ``azure.py``)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import httpx

from llmrun import (
    IDLE_TIMEOUT,
    CallError,
    ComponentContext,
    KeyedRequests,
    Prompt,
    Reply,
    Transport,
    Usage,
    bad_body,
    classify_http,
    json_dumps,
    json_loads,
    thaw,
)

from .openai_presets import PRESETS, Preset

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"

# The provider-neutral generation keys (docs/recipes.md, the base schema's `generation`).
GENERATION_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "tools",
        "tool_choice",
        "response_format",
        "top_k",
    }
)

# What Chat Completions takes: all of them but top_k (Anthropic and Gemini only), and stream
# (read as server-sent events: openai_stream.py).
CHAT_KEYS = (GENERATION_KEYS - {"top_k"}) | {"stream"}

COMMON_OPTIONS: Mapping[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "base_url": {
        "type": "string",
        "pattern": "^https?://",
        "description": "Any OpenAI-compatible server; default: the preset's, else OpenAI's.",
    },
    "preset": {
        "enum": sorted(PRESETS),
        "description": "An OpenAI-compatible service: sets base_url, the key variable and quirks.",
    },
    "api_key_env": {
        "type": "string",
        "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
        "description": "Environment variable holding the key when api_keys is not given.",
    },
    "organization": {
        "type": "string",
        "description": "Sent as OpenAI-Organization (default: $OPENAI_ORG_ID for OpenAI).",
    },
    "project": {
        "type": "string",
        "description": "Sent as OpenAI-Project (default: $OPENAI_PROJECT_ID for OpenAI).",
    },
    "headers": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Extra HTTP headers sent with every request.",
    },
    "extra_body": {
        "type": "object",
        "description": "Merged into every request body (server-specific parameters).",
    },
}


def key_env_of(
    options: Mapping[str, Any], default_base_url: str = OPENAI_BASE_URL
) -> tuple[str, bool] | None:
    """Where an OpenAI-shaped provider reads its key from when the recipe gives no api_keys:
    (variable, required). OpenAI itself needs one; a preset says; a custom server may not."""
    if options.get("api_key_env"):
        return str(options["api_key_env"]), True
    preset = PRESETS.get(str(options.get("preset")))
    if preset is not None:
        return (preset.key_env, preset.key_required) if preset.key_env else None
    base_url = str(options.get("base_url") or default_base_url).rstrip("/")
    if base_url == OPENAI_BASE_URL:
        return OPENAI_KEY_ENV, True
    return None


class OpenAIShaped:
    """Base of the OpenAI-shaped providers: a JSON POST with a bearer key to one path.

    Subclasses set ``path`` and ``supported`` (generation keys the endpoint knows) and
    implement ``body`` and ``reply_from_body``.
    """

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": dict(COMMON_OPTIONS),
    }
    # URLs are ``base_url`` + the OpenAI paths (so the Batch API sits there too); a subclass
    # that builds its own (Azure deployments) sets it False.
    openai_urls: ClassVar[bool] = True
    path: ClassVar[str] = "/chat/completions"
    what: ClassVar[str] = "chat completion"  # for messages
    label: ClassVar[str] = "openai"  # the provider's name, for warnings
    supported: ClassVar[frozenset[str]] = CHAT_KEYS
    default_base_url: ClassVar[str] = OPENAI_BASE_URL
    # Read as the official client reads them when the recipe does not give the option
    # (llmrun.recipe.keyenv.env_options); a provider that is not OpenAI's clears it.
    options_from_env: ClassVar[Mapping[str, str]] = {
        "base_url": "OPENAI_BASE_URL",
        "organization": "OPENAI_ORG_ID",
        "project": "OPENAI_PROJECT_ID",
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.model = str(options["model"])
        self.context = context
        self.preset: Preset | None = PRESETS.get(str(options.get("preset")))
        default = self.preset.base_url if self.preset else self.default_base_url
        self.base_url = str(options.get("base_url") or default).rstrip("/")
        self.url = self._url()
        extra_headers = {"content-type": "application/json", "accept": "application/json"}
        if options.get("organization"):
            extra_headers["openai-organization"] = str(options["organization"])
        if options.get("project"):
            extra_headers["openai-project"] = str(options["project"])
        extra_headers.update({k.lower(): str(v) for k, v in (options.get("headers") or {}).items()})
        self._headers = KeyedRequests(self.url, extra_headers, self._auth_headers)
        self._extra_body: dict[str, Any] = thaw(options.get("extra_body") or {})
        self._warned: set[str] = set()
        self._generation_cache: tuple[Mapping[str, Any], dict[str, Any]] | None = None

    @classmethod
    def api_key_env(cls, options: Mapping[str, Any]) -> tuple[str, bool] | None:
        """Read by the recipe loader when ``api_keys`` is not given (see ``key_env_of``)."""
        return key_env_of(options, cls.default_base_url)

    @classmethod
    def key_endpoint(cls, options: Mapping[str, Any]) -> str:
        """Where the keys go (read by the recipe loader: plan and the run's start show it)."""
        preset = PRESETS.get(str(options.get("preset")))
        return str(options.get("base_url") or (preset.base_url if preset else cls.default_base_url))

    @classmethod
    def key_homes(cls, options: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """The hosts each preset's key variable belongs to: ``DEEPSEEK_API_KEY`` goes to
        DeepSeek's host only, unless the user confirms another (``--allow-host``)."""
        homes: dict[str, tuple[str, ...]] = {}
        for preset in PRESETS.values():
            host = httpx.URL(preset.base_url).host
            if preset.key_env:
                homes[preset.key_env] = (*homes.get(preset.key_env, ()), host)
        return homes

    def _url(self) -> httpx.URL:
        return httpx.URL(self.base_url + self.path)

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.context.warn(message)

    def generation(self, prompt: Prompt) -> dict[str, Any]:
        """The prompt's generation keys as this endpoint and server take them: unknown ones
        dropped (one warning per key and run), preset renames applied. Cached: every prompt of
        a run carries the same mapping."""
        cached = self._generation_cache
        if cached is not None and cached[0] is prompt.generation:
            return dict(cached[1])
        out: dict[str, Any] = {}
        drop: Collection[str] = self.preset.drop if self.preset else ()
        rename: Mapping[str, str] = self.preset.rename if self.preset else {}
        for key, value in thaw(prompt.generation).items():
            if key not in self.supported or key in drop:
                where = f"the {self.preset.title} preset" if self.preset else self.label
                self.warn_once(
                    "generation." + key, f"generation.{key} is not supported by {where}; dropped"
                )
                continue
            out[rename.get(key, key)] = value
        self._generation_cache = (prompt.generation, out)
        return dict(out)

    def body(self, prompt: Prompt) -> dict[str, Any]:
        raise NotImplementedError

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def build_request(self, prompt: Prompt, api_key: str | None) -> httpx.Request:
        # jsonio.dumps: a lone surrogate from the input goes out as its JSON escape.
        body = self.body(prompt)
        request = self._headers.post(json_dumps(body), api_key)
        if body.get("stream") is True:
            request.extensions[IDLE_TIMEOUT] = True
        return request

    def parse_response(self, response: httpx.Response) -> Reply:
        return self._reply(response, header_values(response.headers, REQUEST_ID)[0])

    def _reply(self, response: httpx.Response, request_id: str | None) -> Reply:
        """The reply of a whole (not streamed) answer, ``request_id`` its header."""
        status = response.status_code
        if status >= 300:
            raise error_from(response)
        try:
            data = json_loads(response.content)
            if not isinstance(data, dict):
                raise TypeError("the body is not a JSON object")
            reply = self.reply_from_body(data)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise bad_body(
                f"{type(exc).__name__} reading {self.what} ({len(response.content)} bytes)",
                status,
            ) from None
        reply.request_id = request_id or reply.request_id
        return reply

    def transport(self) -> Transport | None:
        return None


REQUEST_ID = (b"x-request-id",)


def header_values(headers: httpx.Headers, names: tuple[bytes, ...]) -> list[str | None]:
    """``headers.get(name)`` for each of ``names`` (lower case), in one pass over the raw
    headers: httpx's lookups (each a pass, and a guess of the encoding first) were 2% of a
    request's CPU. Values of several headers of one name are joined by ", " as httpx does; a
    value that is not ASCII is left to httpx to decode."""
    found: dict[bytes, list[bytes]] = {}
    for key, value in headers.raw:
        lowered = key.lower()
        if lowered in names:
            found.setdefault(lowered, []).append(value)
    out: list[str | None] = []
    for name in names:
        values = found.get(name)
        if values is None:
            out.append(None)
        elif all(value.isascii() for value in values):
            out.append(", ".join(value.decode("ascii") for value in values))
        else:
            out.append(headers.get(name.decode("ascii")))
    return out


FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def choices_reply(data: dict[str, Any], texts: list[str | None], **more: Any) -> Reply:
    """The ``Reply`` of a body with ``choices`` (chat or completions): the first choice's text
    and finish reason, every text when there are several, usage, model, id, the raw body."""
    raw_finish = data["choices"][0].get("finish_reason")
    return Reply(
        text=texts[0],
        finish_reason=FINISH_REASONS.get(raw_finish, "other") if raw_finish else None,
        usage=usage_of(data),
        model=data.get("model"),
        request_id=data.get("id"),
        choices=texts if len(texts) > 1 else None,
        raw=data,
        **more,
    )


def usage_of(data: Mapping[str, Any]) -> Usage:
    """Usage as OpenAI reports it (prompt/completion tokens with their details)."""
    usage = data.get("usage") or {}
    details_in = usage.get("prompt_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        cached_tokens=details_in.get("cached_tokens"),
        reasoning_tokens=details_out.get("reasoning_tokens"),
    )


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
