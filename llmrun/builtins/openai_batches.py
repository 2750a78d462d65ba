"""The OpenAI Batch API: files + batches endpoints, for the ``openai`` provider and any
OpenAI-compatible server that implements them.

Input lines are ``{custom_id, method: POST, url: /v1/chat/completions, body}``; the batch keeps
llmrun's tag in ``metadata.llmrun_tag`` so a batch created but never recorded can be found again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from llmrun import (
    BATCH_RESULTS,
    BatchInfo,
    BatchState,
    CallError,
    LineResult,
    Prompt,
    Reply,
    classify_http,
    response_json,
)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # per batch file (OpenAI's documented limit)
MAX_BYTES = 200 * 1024 * 1024  # per batch file
ENDED = {"completed", "failed", "expired", "cancelled"}
# Per-line errors worth submitting again (the request itself was fine).
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "rate_limit_exceeded", "server_error"}


class OpenAIBatches:
    """``BatchAPI`` for OpenAI: ``POST /files`` (purpose=batch), ``POST /batches``,
    ``GET /batches/{id}``, ``GET /files/{id}/content``, ``POST /batches/{id}/cancel``."""

    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES
    custom_id_pattern = r"^[A-Za-z0-9_.:-]{1,64}$"

    def __init__(
        self, provider: Any, base_url: str, headers: Callable[[str | None], Mapping[str, str]]
    ) -> None:
        self._provider = provider
        self._base = base_url.rstrip("/")
        self._headers = headers

    def line(self, custom_id: str, prompt: Prompt) -> dict[str, Any]:
        body = self._provider.body(prompt)
        # The Batch API answers whole bodies: a recipe's generation.stream has no meaning there.
        if body.get("stream") is True:
            body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}

    def _h(self, api_key: str | None, *, json_body: bool = True) -> dict[str, str]:
        headers = {k: v for k, v in self._headers(api_key).items() if k.lower() != "content-type"}
        if json_body:
            headers["content-type"] = "application/json"
        return headers

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        response = await client.send(request)
        if response.status_code >= 300:
            raise _error(response)
        return response

    async def _json(self, client: httpx.AsyncClient, request: httpx.Request) -> dict[str, Any]:
        return response_json(await self._send(client, request), "the batch API's answer")

    async def upload(
        self, client: httpx.AsyncClient, api_key: str | None, path: Path, tag: str
    ) -> str | None:
        content = await anyio.Path(path).read_bytes()
        request = client.build_request(
            "POST",
            f"{self._base}/files",
            headers=self._h(api_key, json_body=False),
            data={"purpose": "batch"},
            files={"file": (f"{tag}.jsonl", content, "application/jsonl")},
        )
        data = await self._json(client, request)
        return str(data["id"])

    async def create(
        self,
        client: httpx.AsyncClient,
        api_key: str | None,
        path: Path,
        input_id: str | None,
        tag: str,
    ) -> BatchInfo:
        body = {
            "input_file_id": input_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {"llmrun_tag": tag},
        }
        request = client.build_request(
            "POST", f"{self._base}/batches", headers=self._h(api_key), json=body
        )
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
            params = {"limit": "100", **({"after": after} if after else {})}
            request = client.build_request(
                "GET", f"{self._base}/batches", headers=self._h(api_key), params=params
            )
            page = await self._json(client, request)
            items = page.get("data") or []
            for item in items:
                info = info_from(item)
                if info.tag == tag and info.id not in known:
                    return info
            # Newest first: once past the intent's time (with room for clock skew), stop.
            oldest = min((float(i.get("created_at") or 0) for i in items), default=0.0)
            if not page.get("has_more") or not items or oldest < since - 600:
                return None
            after = str(items[-1]["id"])

    async def get(self, client: httpx.AsyncClient, api_key: str | None, batch_id: str) -> BatchInfo:
        request = client.build_request(
            "GET", f"{self._base}/batches/{batch_id}", headers=self._h(api_key)
        )
        return info_from(await self._json(client, request))

    async def download(
        self, client: httpx.AsyncClient, api_key: str | None, info: BatchInfo, dest: Path
    ) -> None:
        chunks: list[bytes] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = info.downloads.get(key)
            if not file_id:
                continue
            request = client.build_request(
                "GET",
                f"{self._base}/files/{file_id}/content",
                headers=self._h(api_key, json_body=False),
                extensions={BATCH_RESULTS: True},
            )
            content = (await self._send(client, request)).content
            chunks.append(content if not content or content.endswith(b"\n") else content + b"\n")
        await anyio.Path(dest).write_bytes(b"".join(chunks))

    def parse_result(self, line: Mapping[str, Any]) -> LineResult:
        custom_id = str(line.get("custom_id"))
        error = line.get("error")
        response = line.get("response") or {}
        status = response.get("status_code")
        if isinstance(error, dict) and error:
            code = str(error.get("code") or "batch_error")
            return LineResult(
                custom_id,
                code=code,
                message=str(error.get("message") or code),
                retryable=code in RETRYABLE_CODES,
            )
        body = response.get("body")
        if not isinstance(status, int) or status >= 300 or not isinstance(body, dict):
            err = body.get("error") if isinstance(body, dict) else None
            message = str((err or {}).get("message") or "") if isinstance(err, dict) else ""
            err_code = err.get("code") if isinstance(err, dict) else None
            failure = classify_http(int(status or 500), message, {}, code=err_code)
            return LineResult(
                custom_id,
                code=failure.code,
                message=failure.message,
                retryable=failure.retryable,
                status=failure.status,
            )
        try:
            reply: Reply = self._provider.reply_from_body(body)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return LineResult(
                custom_id, code="bad_response", message=f"{type(exc).__name__} reading the reply"
            )
        reply.request_id = response.get("request_id") or reply.request_id
        return LineResult(custom_id, reply=reply, status=status)

    async def cancel(
        self, client: httpx.AsyncClient, api_key: str | None, batch_id: str
    ) -> BatchInfo:
        request = client.build_request(
            "POST", f"{self._base}/batches/{batch_id}/cancel", headers=self._h(api_key)
        )
        return info_from(await self._json(client, request))


def info_from(data: Mapping[str, Any]) -> BatchInfo:
    """A Batch object as BatchInfo."""
    status = str(data.get("status"))
    state: BatchState = "ended" if status in ENDED else status  # type: ignore[assignment]
    errors = (data.get("errors") or {}).get("data") or []
    reason = "; ".join(str(e.get("message") or e.get("code")) for e in errors) or None
    metadata = data.get("metadata") or {}
    downloads = {
        k: str(data[k]) for k in ("output_file_id", "error_file_id", "input_file_id") if data.get(k)
    }
    return BatchInfo(
        id=str(data["id"]),
        state=state,
        outcome=status if status in ENDED else None,  # type: ignore[arg-type]
        counts={k: int(v) for k, v in (data.get("request_counts") or {}).items()},
        reason=reason,
        created_at=data.get("created_at"),
        tag=metadata.get("llmrun_tag"),
        downloads=downloads,
    )


def _error(response: httpx.Response) -> CallError:
    from .openai_wire import error_from

    return error_from(response)
