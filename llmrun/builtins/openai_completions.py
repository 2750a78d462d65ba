"""The ``openai-completions`` provider: the legacy ``/completions`` endpoint (a prompt string,
no chat roles), for base models and servers that only offer it."""

from __future__ import annotations

from typing import Any, ClassVar

from llmrun import Prompt, Register, Reply, hookimpl

from .openai_wire import CHAT_KEYS, OpenAIShaped, choices_reply

# /completions knows neither tools, response formats nor reasoning; logprobs is a count there.
SUPPORTED = CHAT_KEYS - {"reasoning_effort", "tools", "tool_choice", "response_format"}


def prompt_text(prompt: Prompt) -> str:
    """The rendered messages as one prompt string: their texts in order, a blank line apart
    (a system message is simply the text before the user's)."""
    return "\n\n".join(filter(None, (message_text(m) for m in prompt.messages)))


def message_text(message: dict[str, Any]) -> str:
    """The text of a message; the text parts of one with content parts (images left out)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list | tuple) else ()
    return " ".join(str(p.get("text")) for p in parts if isinstance(p, dict) and "text" in p)


def has_images(prompt: Prompt) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image"
        for message in prompt.messages
        if not isinstance(message.get("content"), str)
        for part in message.get("content") or ()
    )


class OpenAICompletions(OpenAIShaped):
    """POST {base_url}/completions; the choices' ``text`` is the reply."""

    path: ClassVar[str] = "/completions"
    what: ClassVar[str] = "completion"
    label: ClassVar[str] = "openai-completions"
    supported: ClassVar[frozenset[str]] = SUPPORTED

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body: the prompt string and the generation keys /completions takes."""
        if has_images(prompt):
            self.warn_once("images", "openai-completions sends text only: images are left out")
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
        return choices_reply(data, [c.get("text") for c in data["choices"]])


@hookimpl
def register_providers(register: Register) -> None:
    register("openai-completions", OpenAICompletions)
