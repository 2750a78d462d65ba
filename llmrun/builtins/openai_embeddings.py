"""The ``openai-embeddings`` provider: ``/embeddings``, several records per request.

It is a ``GroupingProvider``: the engine hands it up to ``batch_size`` prompts at once; the
embedded text of each is its rendered user message. One request answers them all, and
``split_reply`` gives each record its own vector and its share of the usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from llmrun import ComponentContext, Prompt, Register, Reply, Usage, hookimpl

from .openai_completions import has_images, message_text
from .openai_wire import COMMON_OPTIONS, OpenAIShaped

DEFAULT_BATCH_SIZE = 64
MAX_BATCH_SIZE = 2048  # the API's limit on inputs per request


def embedded_text(prompt: Prompt) -> str:
    """What is embedded for a record: its last user message (else the last message)."""
    users = [m for m in prompt.messages if m.get("role") == "user"] or list(prompt.messages)
    return message_text(users[-1]) if users else ""


class OpenAIEmbeddings(OpenAIShaped):
    """POST {base_url}/embeddings with ``input`` a list of texts; ``Reply.vector`` per record."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": {
            **COMMON_OPTIONS,
            "batch_size": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_BATCH_SIZE,
                "default": DEFAULT_BATCH_SIZE,
                "description": "Records embedded per request.",
            },
            "dimensions": {
                "type": "integer",
                "minimum": 1,
                "description": "Shorter vectors (text-embedding-3 models and later).",
            },
        },
    }
    path: ClassVar[str] = "/embeddings"
    what: ClassVar[str] = "embeddings"
    label: ClassVar[str] = "openai-embeddings"
    supported: ClassVar[frozenset[str]] = frozenset()  # no generation key applies

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        self.group_size = int(options.get("batch_size") or DEFAULT_BATCH_SIZE)
        self._dimensions = options.get("dimensions")

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body: every member's text, in order."""
        members = prompt.group or (prompt,)
        self.generation(prompt)  # says once which generation keys are ignored
        if any(has_images(p) for p in members):
            self.warn_once("images", "openai-embeddings embeds text only: images are left out")
        body: dict[str, Any] = {
            "model": self.model,
            "input": [embedded_text(p) for p in members],
            "encoding_format": "float",
        }
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        body.update(self._extra_body)
        return body

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """The whole response: usage in total; ``vector`` set when it holds one embedding."""
        items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        vectors = [[float(x) for x in item["embedding"]] for item in items]
        usage = data.get("usage") or {}
        return Reply(
            text=None,
            finish_reason="stop",
            usage=Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=0),
            model=data.get("model"),
            vector=vectors[0] if len(vectors) == 1 else None,
            raw={**data, "data": items},
        )

    def split_reply(self, reply: Reply, prompts: Sequence[Prompt]) -> list[Reply]:
        """One reply per member, in order: its own vector and its share of the input tokens
        (split evenly, the remainder to the first members, so the shares add up)."""
        items = reply.raw["data"]
        if len(items) != len(prompts):
            raise ValueError(f"{len(items)} embeddings for {len(prompts)} inputs")
        total = reply.usage.input_tokens
        share, extra = divmod(total, len(prompts)) if total is not None else (0, 0)
        replies = []
        for i, item in enumerate(items):
            tokens = None if total is None else share + (1 if i < extra else 0)
            replies.append(
                Reply(
                    text=None,
                    finish_reason="stop",
                    usage=Usage(input_tokens=tokens, output_tokens=0),
                    model=reply.model,
                    request_id=reply.request_id,
                    vector=[float(x) for x in item["embedding"]],
                    raw=item,
                )
            )
        return replies


@hookimpl
def register_providers(register: Register) -> None:
    register("openai-embeddings", OpenAIEmbeddings)
