"""The ``openai-requests`` loader: a JSONL file of OpenAI chat requests, as people have them.

Two line shapes, mixed freely:

- a request body, as the OpenAI cookbook's parallel processor takes it:
  ``{"model": ..., "messages": [...], "max_tokens": ..., "metadata": {...}}``;
- a Batch API line: ``{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions",
  "body": {...}}``, unwrapped to its body with ``custom_id`` beside it.

Each record is the body (plus ``custom_id`` or ``metadata``), ready for
``prompt: {messages: record}``; give ``data.id: custom_id`` or ``data.id: metadata.<field>``.
A line that is neither becomes an error row naming file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from llmrun import SourceRecord

from .lines import _count_lines
from .sources import ENCODING_SCHEMA, ERRORS_SCHEMA, PATH_SCHEMA, FileLoader

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


class OpenAIRequestsLoader(FileLoader):
    """One OpenAI chat request per line (see the module docstring)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {"path": PATH_SCHEMA, "encoding": ENCODING_SCHEMA, "errors": ERRORS_SCHEMA},
    }

    def records(self) -> Iterator[SourceRecord]:
        for lineno, (line, bad) in enumerate(self.source.lines(self.errors), 1):
            if not line.strip():
                continue
            where = f"{self.label}:{lineno}"
            if bad:
                yield SourceRecord(None, where, f"{where}: {bad}")
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                yield SourceRecord(None, where, f"{where}: not valid JSON ({exc})")
                continue
            request, problem = _request(data)
            if problem:
                yield SourceRecord(None, where, f"{where}: {problem}")
                continue
            yield SourceRecord(request, where)

    def count(self) -> int | None:
        return _count_lines(self)


def _request(data: Any) -> tuple[dict[str, Any], str | None]:
    """The record of one line, or why the line is not a chat request."""
    if not isinstance(data, dict):
        return {}, f"expected a JSON object, got {type(data).__name__}"
    if "body" in data and "custom_id" in data:  # a Batch API line
        method, url, body = data.get("method", "POST"), str(data.get("url", "")), data["body"]
        if str(method).upper() != "POST" or not url.endswith(CHAT_PATHS):
            return {}, (
                f"a batch line for {method} {url}: only POST /v1/chat/completions requests "
                "can be run"
            )
        if not isinstance(body, dict):
            return {}, "the batch line's body is not a JSON object"
        data = {**body, "custom_id": data["custom_id"]}
    if not isinstance(data.get("messages"), list):
        return {}, "no `messages` list: not a chat request (nor a batch line with a body)"
    return data, None
