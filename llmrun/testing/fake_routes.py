"""The fake server's routes beyond chat: ``/v1/completions``, ``/v1/embeddings``,
``/v1/images/generations`` (fake_images.py) and Azure
OpenAI's deployment paths (``/openai/deployments/{name}/{operation}?api-version=...`` with an
``api-key`` header or a bearer token). Bodies are built in ``openai_bodies``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from .fake_images import images_answer
from .http11 import Headers
from .openai_bodies import azure_error, completion_answer, embeddings_answer, error_json


class FakeOpenAI(Protocol):
    """What these routes need of the fake server (``fake_openai.FakeOpenAI``): named here, so
    that this module does not import the one that imports it."""

    model: str
    api_keys_allowed: frozenset[str] | None

    def check_key(self, authorization: str | None) -> tuple[int, Headers, bytes] | None: ...

    def chat_answer(self, body: Any, request_id: str) -> tuple[int, Headers, bytes]: ...


MORE_PATHS = frozenset({"/v1/completions", "/v1/embeddings", "/v1/images/generations"})
_AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)")
_API_VERSION = re.compile(r"(?:^|&)api-version=[^&]+")
_AZURE_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)


@dataclass(frozen=True)
class RouteRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    bad_json: bool
    request_id: str


def more_routes(server: FakeOpenAI, req: RouteRequest) -> tuple[int, Headers, bytes]:
    """The answer for a path in ``MORE_PATHS`` or under ``/openai/deployments/``."""
    if req.path.startswith("/openai/deployments/"):
        return _azure(server, req)
    if server.api_keys_allowed is not None:
        denied = server.check_key(req.headers.get("authorization"))
        if denied is not None:
            return denied
    early = _method_and_json(req)
    if early is not None:
        return early
    if req.path == "/v1/completions":
        return completion_answer(req.body, req.request_id, server.model)
    if req.path == "/v1/images/generations":
        return images_answer(req.body, server.model)
    return embeddings_answer(req.body, server.model)


def _method_and_json(req: RouteRequest) -> tuple[int, Headers, bytes] | None:
    if req.method != "POST":
        return error_json(405, f"Method not allowed ({req.method} {req.path}).")
    if req.bad_json:
        return error_json(400, "We could not parse the JSON body of your request.")
    return None


def _azure(server: FakeOpenAI, req: RouteRequest) -> tuple[int, Headers, bytes]:
    m = _AZURE_PATH.fullmatch(req.path)
    # Azure answers an unknown path, or one without api-version, with 404 "Resource not found".
    if m is None or not _API_VERSION.search(req.query):
        return azure_error(404, "404", "Resource not found")
    if server.api_keys_allowed is not None:
        key = req.headers.get("api-key")
        bearer = req.headers.get("authorization", "")
        if key is None and bearer.startswith("Bearer "):
            key = bearer[len("Bearer ") :].strip()
        if key not in server.api_keys_allowed:
            return azure_error(401, "401", _AZURE_DENIED)
    early = _method_and_json(req)
    if early is not None:
        return early
    deployment, operation = m.group(1), m.group(2)
    if operation == "completions":
        return completion_answer(req.body, req.request_id, deployment)
    if operation == "embeddings":
        return embeddings_answer(req.body, deployment)
    body = {**req.body, "model": deployment} if isinstance(req.body, dict) else req.body
    return server.chat_answer(body, req.request_id)
