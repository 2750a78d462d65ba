"""The ``azure-openai`` provider: Chat Completions on an Azure OpenAI deployment.

The URL names the deployment and the API version
(``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...``); the key goes
in an ``api-key`` header, or, with ``auth: bearer``, a Microsoft Entra ID token in
``Authorization: Bearer``. Body and reply are OpenAI's (see ``openai.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from llmrun import ComponentContext, Register, hookimpl

from .openai import OpenAIChat
from .openai_wire import COMMON_OPTIONS

DEFAULT_API_VERSION = "2024-10-21"
KEY_ENV = {"api-key": "AZURE_OPENAI_API_KEY", "bearer": "AZURE_OPENAI_AD_TOKEN"}


class AzureOpenAIChat(OpenAIChat):
    """POST to a deployment's chat completions with ``api-key`` (or bearer) auth."""

    openai_urls: ClassVar[bool] = False

    # Azure's endpoint, deployment and key come from the recipe; OPENAI_* are not its own.
    options_from_env: ClassVar[Mapping[str, str]] = {}
    has_batch_api: ClassVar[bool] = False  # batch_api() returns None (commands/preflight)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "deployment"],
        "properties": {
            "endpoint": {
                "type": "string",
                "pattern": "^https?://",
                "description": "The resource's endpoint, e.g. https://NAME.openai.azure.com",
            },
            "deployment": {"type": "string", "minLength": 1},
            "api_version": {"type": "string", "minLength": 1, "default": DEFAULT_API_VERSION},
            "auth": {
                "enum": ["api-key", "bearer"],
                "default": "api-key",
                "description": "api-key header, or an Entra ID token as a bearer token.",
            },
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "The model behind the deployment (prices); default: deployment.",
            },
            **{k: COMMON_OPTIONS[k] for k in ("api_key_env", "headers", "extra_body")},
        },
    }
    what: ClassVar[str] = "Azure OpenAI chat completion"
    label: ClassVar[str] = "azure-openai"

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.endpoint = str(options["endpoint"]).rstrip("/")
        self.deployment = str(options["deployment"])
        self.api_version = str(options.get("api_version") or DEFAULT_API_VERSION)
        self.auth = str(options.get("auth") or "api-key")
        shared = {k: v for k, v in options.items() if k in ("headers", "extra_body")}
        super().__init__({**shared, "model": options.get("model") or self.deployment}, context)

    @classmethod
    def api_key_env(cls, options: Mapping[str, Any]) -> tuple[str, bool] | None:
        if options.get("api_key_env"):
            return str(options["api_key_env"]), True
        return KEY_ENV[str(options.get("auth") or "api-key")], True

    @classmethod
    def key_endpoint(cls, options: Mapping[str, Any]) -> str:
        return str(options.get("endpoint") or "")

    def _url(self) -> httpx.URL:
        return httpx.URL(
            f"{self.endpoint}/openai/deployments/{quote(self.deployment, safe='')}"
            "/chat/completions",
            params={"api-version": self.api_version},
        )

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        if self.auth == "bearer":
            return {"authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}


@hookimpl
def register_providers(register: Register) -> None:
    register("azure-openai", AzureOpenAIChat)
