"""The OpenAPI document of the server (``GET /openapi.json``). Its request schemas are also what
every body is checked against, so the document cannot drift from what the routes accept."""

from __future__ import annotations

from typing import Any

from ..__about__ import __version__
from .gateway import ROLES

ID_PATTERN = "^[0-9a-f]{32}$"
MAX_RECORDS = 1000  # per POST /v1/records (a job takes any number)

_record = {"type": "object", "description": "A record: the fields the recipe's prompt uses."}
_string_or_list = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
}
_part = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "image_url"]},
        "text": {"type": "string"},
        "image_url": {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "description": "An http(s):// or data: URL."},
                "detail": {"enum": ["auto", "low", "high"]},
            },
        },
    },
}

REQUESTS: dict[str, dict[str, Any]] = {
    "RecordsRequest": {
        "type": "object",
        "required": ["records"],
        "additionalProperties": False,
        "properties": {
            "records": {"type": "array", "items": _record, "minItems": 1, "maxItems": MAX_RECORDS}
        },
    },
    "JobRequest": {
        "oneOf": [
            {
                "type": "object",
                "required": ["records"],
                "additionalProperties": False,
                "properties": {"records": {"type": "array", "items": _record, "minItems": 1}},
            },
            {
                "type": "object",
                "required": ["path"],
                "additionalProperties": False,
                "properties": {
                    "path": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A data file inside the recipe's folder.",
                    }
                },
            },
        ]
    },
    "ChatRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "model": {"type": "string", "description": "Ignored: the recipe's model answers."},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"enum": list(ROLES)},
                        "content": {
                            "anyOf": [
                                {"type": "string"},
                                {"type": "array", "items": _part},
                                {"type": "null"},
                            ]
                        },
                    },
                },
            },
            "stream": {"type": "boolean"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "n": {"type": "integer", "minimum": 1, "maximum": 16},
            "stop": _string_or_list,
            "seed": {"type": "integer"},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "response_format": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
            },
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "reasoning_effort": {"enum": ["minimal", "low", "medium", "high"]},
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["input"],
        "properties": {
            "model": {"type": "string", "description": "Ignored: the recipe's model answers."},
            "input": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2048},
                ]
            },
            "encoding_format": {"enum": ["float", "base64"]},
        },
    },
    "SessionRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"system": {"type": "string", "description": "The system message."}},
    },
    "MessageRequest": {
        "type": "object",
        "required": ["content"],
        "additionalProperties": False,
        "properties": {"content": {"type": "string", "minLength": 1}},
    },
}

_ANSWERS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
            }
        },
    },
    "Row": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["ok", "error"]},
            "text": {"type": ["string", "null"]},
            "fields": {"type": "object"},
            "error": {"type": ["object", "null"]},
        },
    },
    "Rows": {
        "type": "object",
        "required": ["rows"],
        "properties": {"rows": {"type": "array", "items": {"$ref": "#/components/schemas/Row"}}},
    },
    "Job": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "running", "completed", "aborted", "budget"]},
            "total": {"type": ["integer", "null"]},
            "done": {"type": "integer"},
            "ok": {"type": "integer"},
            "error": {"type": "integer"},
            "cost_usd": {"type": "number"},
            "reason": {"type": ["string", "null"]},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "choices", "model"],
        "properties": {"object": {"const": "chat.completion"}, "choices": {"type": "array"}},
    },
    "Embeddings": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
    },
    "Session": {
        "type": "object",
        "required": ["id", "messages"],
        "properties": {"id": {"type": "string"}, "messages": {"type": "array"}},
    },
    "SessionReply": {
        "type": "object",
        "required": ["id", "reply"],
        "properties": {"id": {"type": "string"}, "reply": {"type": ["string", "null"]}},
    },
    "Health": {"type": "object", "required": ["status"]},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "A malformed body, or a value the recipe cannot serve (the message names it).",
        401: "No or a wrong bearer token.",
        404: "No such job or session.",
        413: "The body is larger than the server takes.",
        422: "A record lacks a field the prompt uses.",
        429: "run.budget_usd reached.",
        502: "The provider failed.",
        503: "The queue is full: retry after Retry-After seconds.",
    }
    return {str(c): _json("Error", reasons[c]) for c in codes}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    status: int = 200,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {str(status): ok, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    return op


def _id(name: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}},
    ]


CALLS = (400, 401, 413, 429, 502, 503)


def document(auth: bool) -> dict[str, Any]:
    text = {"description": "Text.", "content": {"text/plain": {"schema": {"type": "string"}}}}
    jsonl = {
        "description": "The job's output rows as JSON lines, followed until the job ends.",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
    paths: dict[str, Any] = {
        "/health": {"get": _op("Liveness", _json("Health", "Serving."), ())},
        "/metrics": {"get": _op("Prometheus metrics", text, (401,))},
        "/openapi.json": {
            "get": _op(
                "This document",
                {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                (401,),
            )
        },
        "/v1/records": {
            "post": _op(
                "Records in, the recipe's output rows out",
                _json("Rows", "One row per record, in order."),
                (*CALLS, 422),
                "RecordsRequest",
            )
        },
        "/v1/jobs": {
            "post": _op(
                "Start a job over records or a data file",
                _json("Job", "Accepted."),
                (400, 401, 413, 422),
                "JobRequest",
                status=202,
            )
        },
        "/v1/jobs/{job_id}": {
            "get": _op(
                "A job's progress", _json("Job", "The job."), (401, 404), None, _id("job_id")
            )
        },
        "/v1/jobs/{job_id}/rows": {
            "get": _op("A job's output rows", jsonl, (401, 404), None, _id("job_id"))
        },
        "/v1/chat/completions": {
            "post": _op(
                "OpenAI Chat Completions through the recipe's provider",
                {
                    "description": "The completion (server-sent events when streaming).",
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                CALLS,
                "ChatRequest",
            )
        },
        "/v1/embeddings": {
            "post": _op(
                "OpenAI Embeddings through the recipe's provider",
                _json("Embeddings", "The vectors."),
                CALLS,
                "EmbeddingsRequest",
            )
        },
        "/v1/sessions": {
            "post": _op(
                "Start a conversation",
                _json("Session", "The new session."),
                (400, 401, 413),
                "SessionRequest",
                status=201,
            )
        },
        "/v1/sessions/{session_id}": {
            "get": _op(
                "A conversation's history",
                _json("Session", "The session."),
                (401, 404),
                None,
                _id("session_id"),
            ),
            "delete": _op(
                "End a conversation",
                {"description": "Deleted."},
                (401, 404),
                None,
                _id("session_id"),
                status=204,
            ),
        },
        "/v1/sessions/{session_id}/messages": {
            "post": _op(
                "Say something; the reply is kept in the session",
                _json("SessionReply", "The reply."),
                (*CALLS, 404),
                "MessageRequest",
                _id("session_id"),
            )
        },
    }
    # Links let a client (and a schema-driven tester) follow an answer's id to its routes.
    for path, status, name, targets in (
        ("/v1/jobs", "202", "job_id", ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/rows")),
        (
            "/v1/sessions",
            "201",
            "session_id",
            ("/v1/sessions/{session_id}", "/v1/sessions/{session_id}/messages"),
        ),
    ):
        answer = paths[path]["post"]["responses"][status]
        answer["links"] = {
            f"{method}{target}": {
                "operationRef": f"#/paths/{_pointer(target)}/{method}",
                "parameters": {name: "$response.body#/id"},
            }
            for target in targets
            for method in paths[target]
        }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "llmrun serve", "version": __version__},
        "paths": paths,
        "components": {"schemas": {**REQUESTS, **_ANSWERS}},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        paths["/health"]["get"]["security"] = []
    return doc


def _pointer(path: str) -> str:
    """A path as one JSON Pointer token (``/`` and ``~`` escaped)."""
    return path.replace("~", "~0").replace("/", "~1")
