"""``prompt: {messages: record}``: each record is a whole request, sent as it is.

For the files people already have: the lines of the OpenAI cookbook's parallel processor
(request bodies ``{model, messages, max_tokens, ..., metadata}``) and of the Batch API (the
``openai-requests`` loader unwraps ``{custom_id, method, url, body}`` to the body with
``custom_id`` beside it). The record's ``messages`` are the messages; every other key but
``custom_id`` and ``metadata`` (which identify the request, never part of it) goes in the body
unchanged, ``model`` included. The recipe's ``generation`` fills only keys a record lacks.

It answers the calls the engine, ``validate`` and ``plan`` make of a ``PromptTemplate``
(``render``, ``missing``, ``variables``, ``field_report``); there is nothing to render.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import TemplateError
from ..values import Prompt
from .model import thaw

# Keys that say which request a line is, not what it asks: kept out of the body sent.
NOT_SENT = frozenset({"custom_id", "metadata"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class RequestPrompt:
    """The record as the request (see the module docstring)."""

    variables = frozenset({"messages"})

    def __init__(self, generation: Mapping[str, Any]) -> None:
        self._defaults = thaw(generation)

    def missing(self, record: Mapping[str, Any]) -> list[str]:
        return [] if "messages" in record else ["messages"]

    def render(self, record_id: str, record: Mapping[str, Any]) -> Prompt:
        messages = record.get("messages")
        problem = _messages_problem(messages)
        if problem:
            raise TemplateError(
                f"{problem} (prompt: {{messages: record}} sends the record's own messages); "
                f"the record has: {', '.join(sorted(map(str, record))) or 'no fields'}"
            )
        assert isinstance(messages, list)
        body = {**self._defaults, **{k: v for k, v in record.items() if k not in NOT_SENT}}
        generation = {k: v for k, v in body.items() if k not in ("model", "messages")}
        return Prompt(record_id, [dict(m) for m in messages], generation, body=body)

    def field_report(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        """A warning when some of the first records are not requests."""
        bad = sum(1 for r in records if _messages_problem(r.get("messages")))
        if not bad:
            return None
        return f"{bad} of the first records have no `messages` list: they become error rows"


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "the record has no `messages` list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{i}] is not a message with a role ({', '.join(sorted(ROLES))})"
    return None
