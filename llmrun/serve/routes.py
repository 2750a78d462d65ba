"""The routes. Every failure a client can cause is an answer naming what was wrong; nothing a
client sends reaches a provider or the disk before it has been checked."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import jsonschema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import RecordError
from ..job.ids import record_id
from ..run.calls import CallFailed, Outcome
from ..values import Prompt
from . import gateway
from .jobs import Jobs, NoJob
from .metrics import CONTENT_TYPE
from .openapi import MAX_RECORDS, REQUESTS, document
from .service import RETRY_AFTER_S, BudgetReached, Busy, Service, Unavailable
from .sessions import NoSession, Sessions

log = logging.getLogger("llmrun.serve")

_VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in REQUESTS.items()}


class HTTPError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **headers: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers


def error_response(status: int, message: str, kind: str, headers: dict[str, str]) -> Response:
    return JSONResponse(gateway.error_body(message, kind), status, headers=headers)


class Routes:
    def __init__(self, service: Service, jobs: Jobs, sessions: Sessions, auth: bool) -> None:
        self.service = service
        self.jobs = jobs
        self.sessions = sessions
        self.auth = auth

    def routes(self) -> list[Route]:
        h = self._handled
        return [
            Route("/health", h("/health", self.health), methods=["GET"]),
            Route("/metrics", h("/metrics", self.metrics), methods=["GET"]),
            Route("/openapi.json", h("/openapi.json", self.openapi), methods=["GET"]),
            Route("/v1/records", h("/v1/records", self.records), methods=["POST"]),
            Route("/v1/jobs", h("/v1/jobs", self.new_job), methods=["POST"]),
            Route("/v1/jobs/{job_id}", h("/v1/jobs/{id}", self.job), methods=["GET"]),
            Route("/v1/jobs/{job_id}/rows", h("/v1/jobs/{id}/rows", self.rows), methods=["GET"]),
            Route("/v1/chat/completions", h("/v1/chat/completions", self.chat), methods=["POST"]),
            Route("/v1/embeddings", h("/v1/embeddings", self.embeddings), methods=["POST"]),
            Route("/v1/sessions", h("/v1/sessions", self.new_session), methods=["POST"]),
            Route(
                "/v1/sessions/{session_id}",
                h("/v1/sessions/{id}", self.session),
                methods=["GET", "DELETE"],
            ),
            Route(
                "/v1/sessions/{session_id}/messages",
                h("/v1/sessions/{id}/messages", self.message),
                methods=["POST"],
            ),
        ]

    def _handled(
        self, name: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler with every failure turned into an answer, and counted."""
        metrics = self.service.metrics

        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message, exc.kind, exc.headers)
            except Busy:
                response = error_response(
                    503,
                    "the server's queue is full; retry later",
                    "overloaded",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            except BudgetReached as exc:
                response = error_response(429, str(exc), "insufficient_quota", {})
            except Unavailable as exc:
                response = error_response(
                    502, f"the provider cannot be used: {exc}", "api_error", {}
                )
            except Exception as exc:  # a plugin's bug: the request fails, the server stays up
                message = self.service.redact.message(f"{type(exc).__name__}: {exc}")
                log.error("%s failed: %s", name, message)
                response = error_response(502, f"the call failed: {message}", "api_error", {})
            metrics.request(name, response.status_code)
            return response

        return endpoint

    # -- reading bodies ----------------------------------------------------------------------

    async def _body(self, request: Request, schema: str) -> Any:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError too
            raise HTTPError(400, f"body: not valid JSON ({exc})") from None
        except RecursionError:  # [[[[... within the size limit still nests too deep to parse
            raise HTTPError(400, "body: nested too deeply") from None
        try:
            # Lone surrogates parse but cannot be written as UTF-8 (a row, a file): refuse them.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, "body: a string holds an unpaired UTF-16 surrogate") from None
        except RecursionError:
            raise HTTPError(400, "body: nested too deeply") from None
        if schema == "RecordsRequest" and _plain_records(data):
            return data  # the common case, checked in a few microseconds
        error = jsonschema.exceptions.best_match(_VALIDATORS[schema].iter_errors(data))
        if error is not None:
            raise HTTPError(400, f"{_where(error.absolute_path)}: {error.message}")
        return data

    # -- plain routes ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "recipe": self.service.recipe.name})

    async def metrics(self, request: Request) -> Response:
        service = self.service
        keys = service.shared.keys.states if service.shared is not None else []
        text = service.metrics.render(keys, service.pending)
        return Response(text, media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(document(self.auth))

    # -- records and jobs --------------------------------------------------------------------

    def _prompts(self, records: list[dict[str, Any]]) -> list[tuple[str, Prompt]]:
        """Each record's id and prompt; 422 naming the first record that cannot fill it."""
        id_field = self.service.recipe.id_field
        out = []
        for i, record in enumerate(records):
            rid = record_id(record, id_field) or str(i)
            try:
                out.append((rid, self.service.render(rid, record)))
            except RecordError as exc:
                raise HTTPError(422, f"records[{i}]: {exc}", exc.code) from None
        return out

    async def records(self, request: Request) -> Response:
        records = (await self._body(request, "RecordsRequest"))["records"]
        if self.service.embeds:
            raise HTTPError(400, "records: embeddings recipes are served at /v1/embeddings")
        prompts = self._prompts(records)
        rows: list[Any] = [None] * len(records)
        failures: list[Exception] = []

        async def one(i: int) -> None:
            rid, prompt = prompts[i]
            try:
                rows[i] = await self.service.record_row(rid, records[i], prompt)
            except (BudgetReached, Unavailable) as exc:
                failures.append(exc)

        async with self.service.admitted(len(records)):
            if len(records) == 1:
                await one(0)
            else:
                async with anyio.create_task_group() as tg:
                    for i in range(len(records)):
                        tg.start_soon(one, i)
        if failures:
            raise failures[0]
        return JSONResponse({"rows": rows})

    async def new_job(self, request: Request) -> Response:
        body = await self._body(request, "JobRequest")
        if "records" in body:
            if self.service.recipe.id_field is not None:
                field = self.service.recipe.id_field
                for i, record in enumerate(body["records"]):
                    if record_id(record, field) is None:
                        raise HTTPError(
                            422, f"records[{i}].{field}: missing (the recipe's data.id)"
                        )
            self._prompts(body["records"])  # every record must fill the prompt
            job = self.jobs.accept_records(body["records"])
        else:
            try:
                job = self.jobs.accept_file(body["path"])
            except gateway.BadRequest as exc:
                raise HTTPError(400, str(exc)) from None
        return JSONResponse(job, 202)

    async def job(self, request: Request) -> Response:
        try:
            return JSONResponse(self.jobs.status(request.path_params["job_id"]))
        except NoJob:
            raise HTTPError(404, "no such job", "not_found") from None

    async def rows(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            self.jobs.status(job_id)
        except NoJob:
            raise HTTPError(404, "no such job", "not_found") from None
        return StreamingResponse(self.jobs.rows(job_id), media_type="application/x-ndjson")

    # -- the OpenAI-compatible gateway -------------------------------------------------------

    async def _call(self, prompt: Prompt) -> Outcome:
        try:
            async with self.service.admitted(1):
                return await self.service.call(prompt)
        except CallFailed as failed:
            err = failed.error
            self.service.metrics.error(err.code)
            message = self.service.redact.message(err.message)
            # The provider refused the request itself (4xx): the client's to fix; else ours.
            status = err.status if err.status is not None and 400 <= err.status < 500 else 502
            if err.code == "rate_limit":
                status = 429
            raise HTTPError(status, message, err.code) from None
        except RecordError as exc:
            raise HTTPError(400, str(exc), exc.code) from None

    async def chat(self, request: Request) -> Response:
        body = await self._body(request, "ChatRequest")
        if self.service.embeds:
            raise HTTPError(400, "model: this recipe makes embeddings; use /v1/embeddings")
        request_id = "chatcmpl-" + uuid.uuid4().hex
        try:
            prompt = gateway.chat_prompt(body, request_id)
        except gateway.BadRequest as exc:
            raise HTTPError(400, str(exc)) from None
        outcome = await self._call(prompt)
        model = self.service.provider.model
        if body.get("stream"):
            chunks = gateway.completion_chunks(outcome.reply, model, request_id)
            return StreamingResponse(iter(list(chunks)), media_type="text/event-stream")
        return JSONResponse(gateway.completion(outcome.reply, model, request_id))

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request, "EmbeddingsRequest")
        provider = self.service.provider
        if not self.service.embeds:
            raise HTTPError(400, "model: this recipe's provider does not make embeddings")
        texts = gateway.embedding_inputs(body)
        request_id = "emb-" + uuid.uuid4().hex
        prompts = gateway.embedding_prompts(texts, request_id)
        size = max(1, int(getattr(provider, "group_size", 1) or 1))
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(prompts), size):
            group = tuple(prompts[start : start + size])
            prompt = Prompt(group[0].record_id, [], {}, group=group)
            outcome = await self._call(prompt)
            try:
                replies = provider.split_reply(outcome.reply, list(group))  # type: ignore[attr-defined]
            except Exception as exc:
                raise HTTPError(502, f"the provider's answer: {exc}", "api_error") from None
            vectors.extend(r.vector or [] for r in replies)
            tokens += outcome.reply.usage.input_tokens or 0
        encoding = str(body.get("encoding_format") or "float")
        return JSONResponse(gateway.embeddings(vectors, tokens, provider.model, encoding))

    # -- sessions ----------------------------------------------------------------------------

    async def new_session(self, request: Request) -> Response:
        body = await self._body(request, "SessionRequest")
        session = self.sessions.create(body.get("system"))
        return JSONResponse(session, 201)

    async def session(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            if request.method == "DELETE":
                self.sessions.delete(session_id)
                return Response(status_code=204)
            return JSONResponse(self.sessions.get(session_id))
        except NoSession:
            raise HTTPError(404, "no such session", "not_found") from None

    async def message(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            self.sessions.get(session_id)
        except NoSession:
            raise HTTPError(404, "no such session", "not_found") from None
        body = await self._body(request, "MessageRequest")
        if self.service.embeds:
            raise HTTPError(400, "content: this recipe makes embeddings, not replies")
        async with self.sessions.lock(session_id):
            try:
                session = self.sessions.get(session_id)  # deleted while waiting?
            except NoSession:
                raise HTTPError(404, "no such session", "not_found") from None
            messages = self.sessions.messages(session, body["content"])
            prompt = Prompt(session_id, messages, self.service.recipe.generation)
            outcome = await self._call(prompt)
            reply = outcome.reply
            self.sessions.add(session, body["content"], reply.text)
        return JSONResponse(
            {
                "id": session_id,
                "reply": reply.text,
                "usage": reply.usage.to_json(),
                "cost_usd": self.service.rows.cost(reply),
                "messages": len(session["messages"]),
            }
        )


def _where(path: Any) -> str:
    """A JSON path as ``records[0].text`` (``body`` for the whole body)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "body"


def _plain_records(data: Any) -> bool:
    """A records body that is certainly valid (else the schema validator says what is wrong):
    the schema validator takes about 0.3 ms, a tenth of a single-record request (measured)."""
    if not isinstance(data, dict) or len(data) != 1:
        return False
    records = data.get("records")
    return (
        isinstance(records, list)
        and 1 <= len(records) <= MAX_RECORDS
        and all(isinstance(r, dict) for r in records)
    )
