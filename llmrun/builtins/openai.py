"""The ``openai`` provider: Chat Completions on OpenAI or any OpenAI-compatible server.

Shared parts (options, presets, headers, errors) are in ``openai_wire``; this module holds the
chat wire format: messages with image parts, generation keys, and the reply normalized (choices,
tool calls, structured output).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from llmrun import FIRST_BYTE, Prompt, Register, Reply, bad_body, hookimpl, load_image, thaw

from .openai_stream import assemble, is_event_stream
from .openai_wire import FINISH_REASONS, OpenAIShaped, choices_reply, error_from, header_values

STREAM_HEADERS = (b"content-type", b"x-request-id")

__all__ = ["FINISH_REASONS", "OpenAIChat", "chat_messages", "error_from", "register_providers"]

JSON_FORMATS = ("json_object", "json_schema")


class OpenAIChat(OpenAIShaped):
    """POST {base_url}/chat/completions with a bearer key; replies normalized to ``Reply``."""

    json_requested = False  # set by body(): did the request ask for JSON (response_format)?

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body (also what batch mode writes per line)."""
        if prompt.body is not None:
            # A request from a request file: sent as it is (its own model and parameters),
            # with only the recipe's extra_body added.
            sent = {"model": self.model, **thaw(prompt.body)}
            sent["messages"] = chat_messages(sent["messages"])
            sent.update(self._extra_body)
            fmt = sent.get("response_format")
            self.json_requested = isinstance(fmt, dict) and fmt.get("type") in JSON_FORMATS
            return sent
        body: dict[str, Any] = {"model": self.model, "messages": chat_messages(prompt.messages)}
        body.update(self.generation(prompt))
        if body.get("stream") is True:
            # Usage comes in a last event only when asked for: costs need it.
            body.setdefault("stream_options", {"include_usage": True})
        elif "stream" in body:
            del body["stream"]  # stream: false is the default; the body stays as before
        body.update(self._extra_body)
        fmt = body.get("response_format")
        # Every prompt of a run has the same generation keys: what the last body asked holds.
        self.json_requested = isinstance(fmt, dict) and fmt.get("type") in JSON_FORMATS
        return body

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """A successful chat completion body as a ``Reply``."""
        messages = [c.get("message") or {} for c in data["choices"]]
        texts: list[str | None] = [m.get("content") for m in messages]
        calls = messages[0].get("tool_calls")
        reply = choices_reply(
            data,
            texts,
            tool_calls=[tool_call(c) for c in calls] if calls else None,
            parsed=self._parsed(texts[0]),
        )
        if texts[0] is None and messages[0].get("refusal"):
            # The model declined (structured outputs say so in `refusal`): a filtered answer,
            # whatever finish_reason the server gave; the refusal text stays in response.raw.
            reply.finish_reason = "content_filter"
        return reply

    def batch_api(self) -> Any:
        """The OpenAI Batch API at this provider's base URL (``llmrun.batch.contract``); None
        for a subclass that builds its URLs another way (Azure deployments), whose batch
        endpoints differ."""
        if not self.openai_urls:
            return None
        from .openai_batches import OpenAIBatches

        return OpenAIBatches(self, self.base_url, self._headers)

    def parse_response(self, response: httpx.Response) -> Reply:
        """As the base class, and a streamed answer (server-sent events) put back together
        first (openai_stream.py)."""
        content_type, request_id = header_values(response.headers, STREAM_HEADERS)
        if response.status_code >= 300 or not is_event_stream(content_type):
            return self._reply(response, request_id)
        data = assemble(response.content, response.status_code)
        try:
            reply = self.reply_from_body(data)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise bad_body(f"{type(exc).__name__} reading a streamed {self.what}", 200) from None
        reply.request_id = request_id or reply.request_id
        first = response.extensions.get(FIRST_BYTE)
        reply.first_token_s = float(first) if isinstance(first, int | float) else None
        return reply

    def _parsed(self, text: str | None) -> Any:
        """The structured value when the request asked for JSON and the text is JSON."""
        if text is None or not self.json_requested:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None


def tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as ``{id, name, arguments}``, arguments parsed when they are JSON."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # kept as the string the model wrote
    return {"id": call.get("id"), "name": function.get("name"), "arguments": arguments}


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with llmrun's neutral content parts in OpenAI's form (images as ``image_url``;
    a local file or data: URL is sent inline as a data URL, an http(s) URL as is)."""
    if all(isinstance(m.get("content"), str) for m in messages):
        return messages
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list | tuple):
            message = {**message, "content": [_part(p) for p in content]}
        out.append(message)
    return out


def _part(part: Any) -> Any:
    if not isinstance(part, dict) or part.get("type") != "image":
        return part
    image = load_image(str(part["source"]))
    url: dict[str, Any] = {"url": image.data_url()}
    if part.get("detail"):
        url["detail"] = part["detail"]
    return {"type": "image_url", "image_url": url}


@hookimpl
def register_providers(register: Register) -> None:
    register("openai", OpenAIChat)
