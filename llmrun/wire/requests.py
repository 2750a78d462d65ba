"""Pieces the JSON providers share: request headers per key and request building, request
encoding, one warning per dropped generation key, reading neutral prompt content."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from ..jsonio import dumps, loads
from .retry import bad_body


def encode(body: Mapping[str, Any]) -> bytes:
    """A request body as UTF-8 JSON (a lone surrogate from the input goes out escaped)."""
    return dumps(body)


def decode(response: httpx.Response, what: str) -> dict[str, Any]:
    """A 2xx response's JSON object; a retryable ``bad_response`` CallError when it is not."""
    try:
        data = loads(response.content)
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


class KeyedRequests:
    """POST requests of JSON bodies to one URL, with headers prepared once per API key.

    ``headers(api_key)`` (also the object's call) gives the ``httpx.Headers`` for a key (batch
    APIs use them). ``post(content, api_key)`` builds the same request httpx builds from
    ``content=``, for about a third of the CPU: the prepared headers (Host included) are
    reused, only Content-Length is new (a test holds the two equal).
    """

    def __init__(
        self,
        url: httpx.URL,
        base: Mapping[str, str],
        auth: Callable[[str], Mapping[str, str]],
    ) -> None:
        self.url = url
        self._base = dict(base)
        self._auth = auth
        self._headers: dict[str | None, httpx.Headers] = {}
        self._raw: dict[str | None, list[tuple[bytes, bytes]]] = {}
        self._sized: dict[tuple[str | None, int], httpx.Headers] = {}

    def headers(self, api_key: str | None) -> httpx.Headers:
        headers = self._headers.get(api_key)
        if headers is None:
            values = dict(self._base)
            if api_key:
                values.update(self._auth(api_key))
            headers = self._headers[api_key] = httpx.Headers(values)
        return headers

    __call__ = headers

    def post(self, content: bytes, api_key: str | None) -> httpx.Request:
        # The headers differ only by key and Content-Length: built once for each pair (httpx
        # copies a Headers object's list instead of normalizing every name and value again).
        sized = (api_key, len(content))
        headers = self._sized.get(sized)
        if headers is None:
            raw = self._raw.get(api_key)
            if raw is None:
                empty = httpx.Request("POST", self.url, headers=self.headers(api_key), content=b"")
                raw = [(k, v) for k, v in empty.headers.raw if k.lower() != b"content-length"]
                self._raw[api_key] = raw
            if len(self._sized) >= 4096:  # bounded: prompt lengths vary without end
                self._sized.clear()
            headers = httpx.Headers([*raw, (b"Content-Length", b"%d" % len(content))])
            self._sized[sized] = headers
        request = httpx.Request("POST", self.url, headers=headers, stream=httpx.ByteStream(content))
        request.read()
        # The same (immutable) URL object on every request, rather than httpx's copy: the
        # transport keeps what it works out of a URL by the object (http1.py _target).
        request.url = self.url
        return request
