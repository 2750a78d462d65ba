"""Anthropic Message Batches: ``POST /v1/messages/batches`` with the requests inline, poll
``GET /v1/messages/batches/{id}``, results JSONL at ``results_url``, ``POST .../cancel``.

Anthropic keeps no metadata with a batch, so ``find`` (adopting a batch whose creation was sent
but not recorded) matches on what it can see: created at or after the intent (less two minutes
of clock skew), the same number of requests, and not a batch llmrun already knows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from llmrun import (
    BATCH_RESULTS,
    BatchInfo,
    CallError,
    LineResult,
    Prompt,
    Reply,
    response_json,
)

MAX_REQUESTS = 100_000  # per batch (Anthropic's documented limit)
MAX_BYTES = 256 * 1024 * 1024
SKEW_S = 120.0
RETRYABLE_ERRORS = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}


class AnthropicBatches:
    """``BatchAPI`` for Anthropic's Message Batches."""

    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES
    custom_id_pattern = r"^[a-zA-Z0-9_-]{1,64}$"

    def __init__(
        self,
        provider: Any,
        base_url: str,
        headers: Callable[[str | None], Mapping[str, str]],
        error_from: Callable[[httpx.Response], CallError],
    ) -> None:
        self._provider = provider
        self._url = base_url.rstrip("/") + "/v1/messages/batches"
        self._headers = headers
        self._error_from = error_from

    def line(self, custom_id: str, prompt: Prompt) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": self._provider.body(prompt)}

    async def _json(self, client: httpx.AsyncClient, request: httpx.Request) -> dict[str, Any]:
        response = await client.send(request)
        if response.status_code >= 300:
            raise self._error_from(response)
        return response_json(response, "the batch API's answer")

    def _h(self, api_key: str | None) -> dict[str, str]:
        return dict(self._headers(api_key))

    def _check_origin(self, url: str) -> None:
        """The results URL is the server's word, and the key goes with the request: it is
        followed only to the origin (scheme, host, port) of the batch API itself, which the
        user's key is allowed to reach. Anthropic's own is always there."""
        base = httpx.URL(self._url)
        try:
            there = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise CallError(
                f"the batch's results_url is not a URL ({exc})", kind="record", code="bad_response"
            ) from None
        if (there.scheme, there.host, there.port) != (base.scheme, base.host, base.port):
            raise CallError(
                f"the batch's results_url is at {there.scheme}://{there.host}"
                f"{'' if there.port is None else f':{there.port}'}, not at the batch API's "
                f"{base.scheme}://{base.host}{'' if base.port is None else f':{base.port}'}: "
                "the key is not sent there",
                kind="record",
                code="bad_response",
            )

    async def upload(
        self, client: httpx.AsyncClient, api_key: str | None, path: Path, tag: str
    ) -> str | None:
        return None  # the requests go inline in create()

    async def create(
        self,
        client: httpx.AsyncClient,
        api_key: str | None,
        path: Path,
        input_id: str | None,
        tag: str,
    ) -> BatchInfo:
        text = await anyio.Path(path).read_text(encoding="utf-8")
        # The lines are JSON already: join them rather than parse and dump them again.
        content = ('{"requests":[' + ",".join(x for x in text.splitlines() if x) + "]}").encode()
        request = client.build_request("POST", self._url, headers=self._h(api_key), content=content)
        return info_from(await self._json(client, request))

    async def find(
        self,
        client: httpx.AsyncClient,
        api_key: str | None,
        tag: str,
        since: float,
        requests: int,
        known: Sequence[str],
    ) -> BatchInfo | None:
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after_id": after} if after else {})}
            request = client.build_request(
                "GET", self._url, headers=self._h(api_key), params=params
            )
            page = await self._json(client, request)
            items = [info_from(i) for i in page.get("data") or []]
            matches = [
                i
                for i in items
                if i.id not in known
                and (i.created_at or 0) >= since - SKEW_S
                and i.counts.get("total") == requests
            ]
            if matches:
                return matches[-1]  # newest first: the earliest after the intent
            oldest = min((i.created_at or 0 for i in items), default=0.0)
            if not page.get("has_more") or not items or oldest < since - SKEW_S:
                return None
            after = str(page.get("last_id") or items[-1].id)

    async def get(self, client: httpx.AsyncClient, api_key: str | None, batch_id: str) -> BatchInfo:
        request = client.build_request("GET", f"{self._url}/{batch_id}", headers=self._h(api_key))
        return info_from(await self._json(client, request))

    async def download(
        self, client: httpx.AsyncClient, api_key: str | None, info: BatchInfo, dest: Path
    ) -> None:
        url = info.downloads.get("results_url")
        content = b""
        if url:
            self._check_origin(url)
            request = client.build_request(
                "GET", url, headers=self._h(api_key), extensions={BATCH_RESULTS: True}
            )
            response = await client.send(request)
            if response.status_code >= 300:
                raise self._error_from(response)
            content = response.content
        await anyio.Path(dest).write_bytes(content)

    def parse_result(self, line: Mapping[str, Any]) -> LineResult:
        custom_id = str(line.get("custom_id"))
        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            try:
                reply: Reply = self._provider.reply_from_body(result.get("message") or {})
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                return LineResult(
                    custom_id, code="bad_response", message=f"{type(exc).__name__} reading reply"
                )
            return LineResult(custom_id, reply=reply, status=200)
        if kind in ("expired", "canceled"):
            code = "batch_expired" if kind == "expired" else "batch_cancelled"
            return LineResult(custom_id, code=code, message=f"request {kind}", retryable=True)
        error = (result.get("error") or {}).get("error") or {}
        code = str(error.get("type") or "batch_error")
        return LineResult(
            custom_id,
            code=code,
            message=str(error.get("message") or code),
            retryable=code in RETRYABLE_ERRORS,
        )

    async def cancel(
        self, client: httpx.AsyncClient, api_key: str | None, batch_id: str
    ) -> BatchInfo:
        request = client.build_request(
            "POST", f"{self._url}/{batch_id}/cancel", headers=self._h(api_key)
        )
        return info_from(await self._json(client, request))


def info_from(data: Mapping[str, Any]) -> BatchInfo:
    """A Message Batch object as BatchInfo."""
    status = data.get("processing_status")
    counts = {k: int(v) for k, v in (data.get("request_counts") or {}).items()}
    counts["total"] = sum(counts.values())
    if status == "ended":
        if data.get("cancel_initiated_at") or counts.get("canceled"):
            outcome: Any = "cancelled"
        elif counts.get("expired"):
            outcome = "expired"
        else:
            outcome = "completed"
        state: Any = "ended"
    else:
        outcome, state = None, "cancelling" if status == "canceling" else "in_progress"
    results_url = data.get("results_url")
    return BatchInfo(
        id=str(data["id"]),
        state=state,
        outcome=outcome,
        counts=counts,
        created_at=_unix(data.get("created_at")),
        downloads={"results_url": str(results_url)} if results_url else {},
    )


def _unix(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
