"""Pieces the non-OpenAI JSON providers (anthropic, gemini) share: request encoding, one warning
per dropped generation key, reading neutral prompt content."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from ..failures import bad_body


def encode(body: Mapping[str, Any]) -> bytes:
    """A request body as UTF-8 JSON (a lone surrogate from the input goes out escaped)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "backslashreplace")


def decode(response: httpx.Response, what: str) -> dict[str, Any]:
    """A 2xx response's JSON object; a retryable ``bad_response`` CallError when it is not."""
    try:
        data = json.loads(response.content)
    except ValueError as exc:
        raise bad_body(
            f"{type(exc).__name__} reading {what} ({len(response.content)} bytes)",
            response.status_code,
        ) from None
    if not isinstance(data, dict):
        raise bad_body(f"{what} is not a JSON object", response.status_code)
    return data


def error_json(response: httpx.Response) -> Any:
    """The parsed body of an error response, or None when it is not JSON."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


class Dropper:
    """Warns once per run for each generation key a provider cannot send."""

    def __init__(self, provider: str, warn: Callable[[str], None]) -> None:
        self._provider = provider
        self._warn = warn
        self._seen: set[str] = set()

    def drop(self, key: str, why: str = "") -> None:
        because = f" ({why})" if why else ""
        self.once(key, f"generation.{key} is not supported by {self._provider}: not sent{because}")

    def once(self, key: str, message: str) -> None:
        """Warn ``message`` unless a warning for ``key`` was given already."""
        if key not in self._seen:
            self._seen.add(key)
            self._warn(message)

    def drop_all(self, keys: Iterable[str], generation: Mapping[str, Any]) -> None:
        for key in keys:
            if key in generation:
                self.drop(key)


def parts_of(content: Any) -> list[dict[str, Any]]:
    """A message's content as neutral parts (a plain string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p if isinstance(p, dict) else {"type": "text", "text": str(p)} for p in content]
    return [{"type": "text", "text": "" if content is None else str(content)}]


def text_of(content: Any) -> str:
    """The text of a message's content (image parts left out)."""
    return "".join(p.get("text", "") for p in parts_of(content) if p.get("type") == "text")


def parse_json(text: str | None) -> Any:
    """``text`` parsed as JSON, or None when it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
