"""A stateful fake of the OpenAI (files + batches) and Anthropic (message batches) batch APIs on
127.0.0.1, for tests.

A batch moves one stage per poll (``GET`` of the batch): validating -> in_progress ->
finalizing -> completed (OpenAI; Anthropic: in_progress -> ended). Tests steer it with:

- ``outcomes``: per created batch, in order, "complete" (default), "fail" (the whole batch fails
  validation), "expire" (the first half done, the rest expired), "partial" (every third request
  answers HTTP 500);
- ``hold = True``: batches stay in_progress (to cancel them, or look at them); ``holds``: the
  indexes of the batches held, when only some are;
- ``usage``: the (input, output) tokens each reply reports;
- ``advance(seconds)``: moves the fake clock (a batch older than 24 h expires when polled);
- ``pad``: bytes added to every JSON object answered (a server that floods its answers);
- ``results_base``: Anthropic's ``results_url`` points there instead of at this server.

``submitted`` counts every custom_id in every batch created, so a test can show nothing was
submitted twice. Results are written in the reverse order of the input.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import threading
import time
from collections import Counter
from typing import Any

from .fake_base import ThreadedServer
from .http11 import Connection, Headers, response_bytes, wants_keep_alive

OPENAI_STAGES = ["validating", "in_progress", "finalizing", "completed"]
WINDOW_S = 24 * 3600


class FakeBatches(ThreadedServer):
    """The fake server; ``flavor`` is "openai" or "anthropic"."""

    base_path = "/v1"

    def __init__(self, flavor: str = "openai") -> None:
        self.flavor = flavor
        self.outcomes: list[str] = []
        self.hold = False
        self.holds: set[int] = set()
        self.usage = (10, 5)
        self.pad = 0  # > 0: every JSON object answered grows by this many bytes (a flood)
        self.results_base: str | None = None  # another origin for Anthropic's results_url
        self.offset = 0.0
        self.submitted: Counter[str] = Counter()
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or None)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        super().__init__()

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def count(self, method: str, path_prefix: str) -> int:
        """Requests received with this method whose path starts with ``path_prefix``."""
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- HTTP --------------------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> tuple[Headers, bytes]:
        return [("content-type", "application/json")], _error(status, message, self.flavor)

    def dispatch(
        self,
        conn: Connection,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        with self._lock:
            try:
                parsed = (
                    json.loads(body) if body and "json" in headers.get("content-type", "") else None
                )
            except ValueError:
                parsed = None
            self.requests.append((method, path, parsed))
            try:
                status, payload, ctype = self._route(method, path, params, headers, body, parsed)
            except _Fail as fail:
                status, payload, ctype = (
                    fail.status,
                    _error(fail.status, fail.message, self.flavor),
                    "application/json",
                )
        if self.pad and ctype == "application/json" and payload.endswith(b"}"):
            payload = payload[:-1] + b', "pad": "' + b"x" * self.pad + b'"}'
        out: Headers = [("content-type", ctype), ("request-id", f"req_{next(self._seq)}")]
        close = not wants_keep_alive(version, headers)
        conn.reply(response_bytes(status, out, payload, close=close), close=close, delay=0.0)

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        raw: bytes,
        body: Any,
    ) -> tuple[int, bytes, str]:
        if self.flavor == "anthropic":
            if not headers.get("x-api-key") or not headers.get("anthropic-version"):
                raise _Fail(401, "x-api-key and anthropic-version headers are required")
            return self._anthropic(method, path, params, body)
        if not headers.get("authorization", "").startswith("Bearer "):
            raise _Fail(401, "missing bearer key")
        return self._openai(method, path, params, headers, raw, body)

    # -- OpenAI ------------------------------------------------------------------------------

    def _openai(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        raw: bytes,
        body: Any,
    ) -> tuple[int, bytes, str]:
        if method == "POST" and path == "/v1/chat/completions":  # direct calls (auto mode)
            line = json.loads(
                self._openai_line({}, "direct", "echo: " + _last_user_text(body), None)
            )
            return _ok(line["response"]["body"])
        if method == "POST" and path == "/v1/files":
            fields = _multipart(headers.get("content-type", ""), raw)
            if fields.get("purpose") != b"batch" or "file" not in fields:
                raise _Fail(400, "purpose=batch and a file are required")
            fid = f"file-{next(self._seq)}"
            self.files[fid] = fields["file"]
            return _ok(
                {
                    "id": fid,
                    "object": "file",
                    "bytes": len(fields["file"]),
                    "created_at": int(self.now()),
                    "filename": "input.jsonl",
                    "purpose": "batch",
                    "status": "processed",
                }
            )
        m = re.fullmatch(r"/v1/files/([^/]+)/content", path)
        if method == "GET" and m:
            if m.group(1) not in self.files:
                raise _Fail(404, "no such file")
            return 200, self.files[m.group(1)], "application/jsonl"
        if method == "POST" and path == "/v1/batches":
            if not isinstance(body, dict) or body.get("input_file_id") not in self.files:
                raise _Fail(400, "input_file_id is not an uploaded file")
            if (
                body.get("endpoint") != "/v1/chat/completions"
                or body.get("completion_window") != "24h"
            ):
                raise _Fail(400, "unsupported endpoint or completion_window")
            lines = [
                json.loads(x) for x in self.files[body["input_file_id"]].splitlines() if x.strip()
            ]
            ids = [x.get("custom_id") for x in lines]
            if len(set(ids)) != len(ids) or not all(
                x.get("method") == "POST"
                and x.get("url") == "/v1/chat/completions"
                and isinstance(x.get("body"), dict)
                for x in lines
            ):
                raise _Fail(400, "invalid batch input file")
            batch = self._new_batch(f"batch_{next(self._seq)}", lines, body.get("metadata") or {})
            batch["input_file_id"] = body["input_file_id"]
            return _ok(self._openai_view(batch))
        if method == "GET" and path == "/v1/batches":
            items = [self._openai_view(self.batches[i]) for i in reversed(self._order)]
            if "after" in params:
                ids = [i["id"] for i in items]
                items = items[ids.index(params["after"]) + 1 :] if params["after"] in ids else []
            limit = int(params.get("limit", 20))
            return _ok({"object": "list", "data": items[:limit], "has_more": len(items) > limit})
        m = re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path)
        if m and m.group(1) in self.batches:
            batch = self.batches[m.group(1)]
            if method == "POST" and m.group(2):
                if batch["status"] in ("validating", "in_progress", "finalizing"):
                    batch["status"] = "cancelling"
                return _ok(self._openai_view(batch))
            if method == "GET" and not m.group(2):
                self._step(batch)
                return _ok(self._openai_view(batch))
        raise _Fail(404, f"no route for {method} {path}")

    def _openai_view(self, b: dict[str, Any]) -> dict[str, Any]:
        done = b.get("results")
        counts = {"total": len(b["lines"]), "completed": 0, "failed": 0}
        if done is not None:
            counts["completed"] = sum(1 for r in done if r[1] is not None)
            counts["failed"] = len(done) - counts["completed"]
        return {
            "id": b["id"],
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": b.get("input_file_id"),
            "completion_window": "24h",
            "status": b["status"],
            "created_at": int(b["created_at"]),
            "output_file_id": b.get("output_file_id"),
            "error_file_id": b.get("error_file_id"),
            "errors": {"object": "list", "data": b["errors"]} if b.get("errors") else None,
            "request_counts": counts,
            "metadata": b["metadata"],
        }

    # -- Anthropic ---------------------------------------------------------------------------

    def _anthropic(
        self, method: str, path: str, params: dict[str, str], body: Any
    ) -> tuple[int, bytes, str]:
        if method == "POST" and path == "/v1/messages/batches":
            reqs = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(reqs, list) or not reqs:
                raise _Fail(400, "requests: a non-empty list is required")
            ids = [r.get("custom_id") for r in reqs]
            if (
                len(set(ids)) != len(ids)
                or not all(
                    isinstance(i, str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids
                )
                or not all(
                    isinstance(r.get("params"), dict) and r["params"].get("max_tokens")
                    for r in reqs
                )
            ):
                raise _Fail(400, "invalid requests (custom_id unique, params with max_tokens)")
            lines = [{"custom_id": r["custom_id"], "body": r["params"]} for r in reqs]
            batch = self._new_batch(f"msgbatch_{next(self._seq):06d}", lines, {})
            return _ok(self._anthropic_view(batch))
        if method == "GET" and path == "/v1/messages/batches":
            items = [self._anthropic_view(self.batches[i]) for i in reversed(self._order)]
            if "after_id" in params:
                ids = [i["id"] for i in items]
                items = (
                    items[ids.index(params["after_id"]) + 1 :] if params["after_id"] in ids else []
                )
            limit = int(params.get("limit", 20))
            page = items[:limit]
            return _ok(
                {
                    "data": page,
                    "has_more": len(items) > limit,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                }
            )
        m = re.fullmatch(r"/v1/messages/batches/([^/]+)(/cancel|/results)?", path)
        if m and m.group(1) in self.batches:
            batch = self.batches[m.group(1)]
            if method == "POST" and m.group(2) == "/cancel":
                if batch["status"] in ("validating", "in_progress", "finalizing"):
                    batch["status"] = "cancelling"
                    batch["cancel_at"] = self.now()
                return _ok(self._anthropic_view(batch))
            if method == "GET" and m.group(2) == "/results":
                if batch.get("results") is None:
                    raise _Fail(400, "the batch has not ended")
                return 200, self._anthropic_results(batch), "application/binary"
            if method == "GET" and not m.group(2):
                self._step(batch)
                return _ok(self._anthropic_view(batch))
        raise _Fail(404, f"no route for {method} {path}")

    def _anthropic_view(self, b: dict[str, Any]) -> dict[str, Any]:
        status = b["status"]
        ended = status in ("completed", "failed", "expired", "cancelled")
        counts = {
            "processing": 0 if ended else len(b["lines"]),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        for _, reply, err in b.get("results") or []:
            key = (
                "succeeded"
                if reply is not None
                else {"batch_expired": "expired", "batch_cancelled": "canceled"}.get(
                    err[0], "errored"
                )
            )
            counts[key] += 1
        return {
            "id": b["id"],
            "type": "message_batch",
            "processing_status": "ended"
            if ended
            else ("canceling" if status == "cancelling" else "in_progress"),
            "request_counts": counts,
            "created_at": _rfc3339(b["created_at"]),
            "expires_at": _rfc3339(b["created_at"] + WINDOW_S),
            "ended_at": _rfc3339(self.now()) if ended else None,
            "cancel_initiated_at": _rfc3339(b["cancel_at"]) if b.get("cancel_at") else None,
            "results_url": (
                f"{self.results_base or self.url}/messages/batches/{b['id']}/results"
                if ended
                else None
            ),
        }

    def _anthropic_results(self, b: dict[str, Any]) -> bytes:
        out = []
        for cid, reply, err in reversed(b["results"]):
            if reply is not None:
                text = reply
                result: dict[str, Any] = {
                    "type": "succeeded",
                    "message": {
                        "id": f"msg_{cid}",
                        "type": "message",
                        "role": "assistant",
                        "model": "fake-claude",
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": self.usage[0], "output_tokens": self.usage[1]},
                    },
                }
            elif err[0] == "batch_expired":
                result = {"type": "expired"}
            elif err[0] == "batch_cancelled":
                result = {"type": "canceled"}
            else:
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": err[1]}},
                }
            out.append(json.dumps({"custom_id": cid, "result": result}) + "\n")
        return "".join(out).encode()

    # -- life cycle --------------------------------------------------------------------------

    def _new_batch(
        self, bid: str, lines: list[dict[str, Any]], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        index = len(self._order)
        outcome = self.outcomes[index] if index < len(self.outcomes) else "complete"
        for line in lines:
            self.submitted[line["custom_id"]] += 1
        batch = {
            "id": bid,
            "lines": lines,
            "metadata": metadata,
            "status": "validating",
            "created_at": self.now(),
            "outcome": outcome,
            "stage": 0,
        }
        self.batches[bid] = batch
        self._order.append(bid)
        return batch

    def _step(self, b: dict[str, Any]) -> None:
        """One poll: the batch moves on one stage."""
        status = b["status"]
        if status in ("completed", "failed", "expired", "cancelled"):
            return
        if status == "cancelling":
            done = len(b["lines"]) // 2 if b["stage"] >= 1 else 0
            self._finish(b, "cancelled", done)
            return
        if self.now() - b["created_at"] > WINDOW_S:
            self._finish(b, "expired", 0)
            return
        if status == "validating" and b["outcome"] == "fail":
            b["errors"] = [
                {
                    "code": "invalid_request",
                    "message": "the input file is not valid (fake)",
                    "line": 1,
                }
            ]
            self._finish(b, "failed", 0)
            return
        held = self.hold or self._order.index(b["id"]) in self.holds
        if held and status == "in_progress":
            return
        b["stage"] += 1
        if b["stage"] < 3:
            b["status"] = OPENAI_STAGES[b["stage"]]
            return
        if b["outcome"] == "expire":
            self._finish(b, "expired", len(b["lines"]) // 2)
        else:
            self._finish(b, "completed", len(b["lines"]))

    def _finish(self, b: dict[str, Any], status: str, done: int) -> None:
        results: list[tuple[str, str | None, tuple[str, str] | None]] = []
        for i, line in enumerate(b["lines"]):
            cid = line["custom_id"]
            if i >= done:
                if status in ("expired", "cancelled"):
                    code = "batch_expired" if status == "expired" else "batch_cancelled"
                    results.append((cid, None, (code, f"request {status} (fake)")))
                continue
            if b["outcome"] == "partial" and i % 3 == 2:
                results.append((cid, None, ("server_error", "HTTP 500 inside the batch (fake)")))
                continue
            results.append((cid, "echo: " + _last_user_text(line["body"]), None))
        b["status"] = status
        b["results"] = results if status != "failed" else []
        if self.flavor == "openai" and status != "failed":
            ok = [
                self._openai_line(b, cid, reply, None)
                for cid, reply, _ in reversed(results)
                if reply is not None
            ]
            bad = [
                self._openai_line(b, cid, None, err)
                for cid, _, err in reversed(results)
                if err is not None
            ]
            if ok:
                b["output_file_id"] = fid = f"file-{next(self._seq)}"
                self.files[fid] = "".join(ok).encode()
            if bad:
                b["error_file_id"] = fid = f"file-{next(self._seq)}"
                self.files[fid] = "".join(bad).encode()

    def _openai_line(
        self, b: dict[str, Any], cid: str, reply: str | None, err: tuple[str, str] | None
    ) -> str:
        line: dict[str, Any] = {"id": f"batch_req_{next(self._seq)}", "custom_id": cid}
        if reply is not None:
            line["response"] = {
                "status_code": 200,
                "request_id": f"req_{cid}",
                "body": {
                    "id": f"chatcmpl-{cid}",
                    "object": "chat.completion",
                    "created": int(self.now()),
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": reply},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": self.usage[0],
                        "completion_tokens": self.usage[1],
                        "total_tokens": sum(self.usage),
                    },
                },
            }
            line["error"] = None
        elif err is not None and err[0] == "server_error":
            line["response"] = {
                "status_code": 500,
                "request_id": f"req_{cid}",
                "body": {"error": {"message": err[1], "type": "server_error", "code": None}},
            }
            line["error"] = None
        else:
            assert err is not None
            line["response"] = None
            line["error"] = {"code": err[0], "message": err[1]}
        return json.dumps(line) + "\n"


class _Fail(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _ok(data: Any) -> tuple[int, bytes, str]:
    return 200, json.dumps(data).encode(), "application/json"


def _error(status: int, message: str, flavor: str) -> bytes:
    if flavor == "anthropic":
        return json.dumps(
            {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        ).encode()
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    ).encode()


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (enough for file uploads)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return {}
    out: dict[str, bytes] = {}
    for chunk in raw.split(b"--" + m.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, value = chunk.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            out[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return out
