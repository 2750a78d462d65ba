"""Estimating a request's tokens before it is sent (rate limits, budget, ``plan``).

With the ``tiktoken`` extra installed (and its encoding file cached or downloadable), text is
counted with the ``o200k_base`` encoding (exact for current OpenAI models, close for others).
Without it, the documented heuristic: one token per 4 characters of text (rounded up), the
ratio OpenAI's own guidance gives for English. Each message adds 4 tokens of framing and each
image a flat 765 (a 1024x1024 image at high detail on OpenAI's scale). Output tokens are counted
as the ceiling the request allows: ``max_tokens`` (or ``max_completion_tokens``) times ``n``, or
``default_output`` when the recipe sets none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from ..values import Prompt

MESSAGE_OVERHEAD = 4
IMAGE_TOKENS = 765
DEFAULT_OUTPUT = 256


@cache
def _counter() -> Callable[[str], int]:
    try:
        import tiktoken

        # The encoding is downloaded on first use; offline without a cached copy, it fails.
        encoding = tiktoken.get_encoding("o200k_base")
    except Exception:
        return heuristic_count
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def heuristic_count(text: str) -> int:
    return (len(text) + 3) // 4


def count_text(text: str) -> int:
    """Tokens in ``text``: tiktoken when installed, else the 4-characters heuristic."""
    return _counter()(text)


def method() -> str:
    """How counts are made, for ``plan`` and the docs: ``tiktoken`` or ``heuristic``."""
    return "heuristic" if _counter() is heuristic_count else "tiktoken"


def input_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            total += count_text(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    total += count_text(str(part.get("text", "")))
                else:
                    total += IMAGE_TOKENS
    return total


def output_ceiling(generation: Mapping[str, Any], default_output: int = DEFAULT_OUTPUT) -> int:
    limit = generation.get("max_completion_tokens") or generation.get("max_tokens")
    n = int(generation.get("n") or 1)
    return int(limit or default_output) * n


def estimate(prompt: Prompt, default_output: int = DEFAULT_OUTPUT) -> tuple[int, int]:
    """(input tokens, most output tokens) a prompt may use."""
    return input_tokens(prompt.messages), output_ceiling(prompt.generation, default_output)
