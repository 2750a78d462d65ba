"""Presets for OpenAI-compatible services, as data: ``preset: deepseek`` in the provider options.

A preset sets the base URL (``base_url`` still overrides it), the environment variable the key
is read from when ``api_keys`` is not given, and the server's quirks: generation keys it rejects
(dropped, with one warning per run) and keys it spells differently (renamed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Preset:
    """One OpenAI-compatible service."""

    title: str
    base_url: str
    key_env: str | None  # where the key is read from when the recipe gives no api_keys
    key_required: bool  # a hosted service: no key, no run (a local server may run without one)
    drop: frozenset[str] = frozenset()  # generation keys the server rejects
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# Local servers speak max_tokens everywhere; max_completion_tokens only in recent versions.
_LOCAL_RENAME = MappingProxyType({"max_completion_tokens": "max_tokens"})

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "vllm": Preset("vLLM", "http://localhost:8000/v1", "VLLM_API_KEY", False),
        "sglang": Preset("SGLang", "http://localhost:30000/v1", "SGLANG_API_KEY", False),
        "llamacpp": Preset(
            "llama.cpp server",
            "http://localhost:8080/v1",
            "LLAMACPP_API_KEY",
            False,
            drop=frozenset({"reasoning_effort"}),
            rename=_LOCAL_RENAME,
        ),
        "ollama": Preset(
            "Ollama",
            "http://localhost:11434/v1",
            None,
            False,
            drop=frozenset({"logprobs", "top_logprobs", "n"}),
            rename=_LOCAL_RENAME,
        ),
        "lmstudio": Preset(
            "LM Studio",
            "http://localhost:1234/v1",
            None,
            False,
            drop=frozenset({"logprobs", "top_logprobs", "n", "reasoning_effort"}),
            rename=_LOCAL_RENAME,
        ),
        "deepseek": Preset(
            "DeepSeek",
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY",
            True,
            drop=frozenset({"n", "seed", "reasoning_effort"}),
            rename=_LOCAL_RENAME,
        ),
        "dashscope": Preset(
            "Alibaba DashScope (Qwen, compatible mode)",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            True,
            drop=frozenset({"reasoning_effort"}),
            rename=_LOCAL_RENAME,
        ),
        "openrouter": Preset(
            "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", True
        ),
        "together": Preset(
            "Together AI",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            True,
            rename=_LOCAL_RENAME,
        ),
        "groq": Preset(
            "Groq",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
            True,
            drop=frozenset({"n", "logprobs", "top_logprobs"}),
        ),
        "mistral": Preset(
            "Mistral AI",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
            True,
            drop=frozenset({"logprobs", "top_logprobs", "reasoning_effort"}),
            rename=MappingProxyType({"max_completion_tokens": "max_tokens", "seed": "random_seed"}),
        ),
        "deepinfra": Preset(
            "DeepInfra",
            "https://api.deepinfra.com/v1/openai",
            "DEEPINFRA_API_KEY",
            True,
            rename=_LOCAL_RENAME,
        ),
        "fireworks": Preset(
            "Fireworks AI",
            "https://api.fireworks.ai/inference/v1",
            "FIREWORKS_API_KEY",
            True,
            rename=_LOCAL_RENAME,
        ),
        "litellm": Preset("LiteLLM proxy", "http://localhost:4000/v1", "LITELLM_API_KEY", False),
    }
)
