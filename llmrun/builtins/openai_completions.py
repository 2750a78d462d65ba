"""The ``openai-completions`` provider: the legacy ``/completions`` endpoint (a prompt string,
no chat roles), for base models and servers that only offer it."""

from __future__ import annotations

from typing import Any, ClassVar

from ..hookspecs import Register, hookimpl
from ..values import Prompt, Reply
from .openai import FINISH_REASONS
from .openai_wire import OpenAIShaped, usage_of

# /completions knows neither tools, response formats nor reasoning; logprobs is a count there.
SUPPORTED = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
    }
)


def prompt_text(prompt: Prompt) -> str:
    """The rendered messages as one prompt string: their texts in order, a blank line apart
    (a system message is simply the text before the user's)."""
    return "\n\n".join(filter(None, (message_text(m) for m in prompt.messages)))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list | tuple) else ()
    return " ".join(str(p.get("text")) for p in parts if isinstance(p, dict) and "text" in p)


class OpenAICompletions(OpenAIShaped):
    """POST {base_url}/completions; the choices' ``text`` is the reply."""

    path: ClassVar[str] = "/completions"
    what: ClassVar[str] = "completion"
    supported: ClassVar[frozenset[str]] = SUPPORTED

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body: the prompt string and the generation keys /completions takes."""
        body: dict[str, Any] = {"model": self.model, "prompt": prompt_text(prompt)}
        generation = self.generation(prompt)
        if "max_completion_tokens" in generation:
            limit = generation.pop("max_completion_tokens")
            generation.setdefault("max_tokens", limit)
        wants_logprobs = generation.pop("logprobs", None)
        top = generation.pop("top_logprobs", None)
        if wants_logprobs or top:
            generation["logprobs"] = int(top or 0)  # how many alternatives per token, 0..5
        body.update(generation)
        body.update(self._extra_body)
        return body

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        """A successful completion body as a ``Reply``."""
        choices = data["choices"]
        texts: list[str | None] = [c.get("text") for c in choices]
        raw_finish = choices[0].get("finish_reason")
        return Reply(
            text=texts[0],
            finish_reason=FINISH_REASONS.get(raw_finish, "other") if raw_finish else None,
            usage=usage_of(data),
            model=data.get("model"),
            request_id=data.get("id"),
            choices=texts if len(texts) > 1 else None,
            raw=data,
        )


@hookimpl
def register_providers(register: Register) -> None:
    register("openai-completions", OpenAICompletions)
