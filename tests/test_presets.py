"""Presets for OpenAI-compatible services: base URL, the key's variable, quirks; and the key
read from a provider's own variable when the recipe gives no api_keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmrun.api import open_recipe
from llmrun.builtins.openai import OpenAIChat
from llmrun.builtins.openai_presets import PRESETS
from llmrun.errors import RecipeError
from llmrun.recipe.model import freeze
from llmrun.run.engine import build_component
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, read_cli, write_jsonl, write_recipe

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "hi"}]


def load(folder: Path, provider: dict[str, Any], environ: dict[str, str]) -> Any:
    write_jsonl(folder / "data.jsonl", [{"id": "a", "text": "x"}])
    recipe, registry = open_recipe(write_recipe(folder, basic_recipe(provider)), environ=environ)
    chat = build_component(
        registry, "provider", recipe.provider, ComponentContext(folder, recipe.name)
    )
    return recipe, chat


def test_every_preset_is_in_the_docs_table_with_its_url_and_variable():
    text = (ROOT / "docs/providers.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")
    }
    for name, preset in PRESETS.items():
        assert name in rows, f"preset {name} is not in docs/providers.md"
        assert preset.base_url in rows[name]
        assert (preset.key_env or "none") in rows[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_sets_base_url_and_reads_its_key_variable(tmp_path: Path, name: str):
    preset = PRESETS[name]
    environ = {preset.key_env: f"sk-{name}-secret-0123"} if preset.key_env else {}
    recipe, chat = load(tmp_path, {"name": "openai", "model": "m", "preset": name}, environ)
    assert str(chat.url) == preset.base_url + "/chat/completions"
    request = chat.build_request(
        Prompt("a", PROMPT, freeze({})), recipe.api_keys[0] if recipe.api_keys else None
    )
    if preset.key_env:
        key = environ[preset.key_env]
        assert recipe.api_keys == (key,) and key in recipe.secrets
        assert request.headers["authorization"] == f"Bearer {key}"
    else:
        assert recipe.api_keys == () and "authorization" not in request.headers


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.key_required))
def test_a_hosted_preset_without_its_key_is_a_recipe_error_naming_the_variable(
    tmp_path: Path, name: str
):
    with pytest.raises(RecipeError) as info:
        load(tmp_path, {"name": "openai", "model": "m", "preset": name}, {})
    (problem,) = info.value.problems
    assert PRESETS[name].key_env in problem.message and problem.line is not None
    assert problem.path == "provider.api_keys"


def test_a_local_server_runs_without_a_key_but_uses_one_when_set(tmp_path: Path):
    recipe, _ = load(tmp_path, {"name": "openai", "model": "m", "preset": "vllm"}, {})
    assert recipe.api_keys == ()
    recipe, _ = load(
        tmp_path, {"name": "openai", "model": "m", "preset": "vllm"}, {"VLLM_API_KEY": "tok-1"}
    )
    assert recipe.api_keys == ("tok-1",)


def test_api_keys_in_the_recipe_win_and_base_url_overrides_the_preset(tmp_path: Path):
    provider = {
        "name": "openai",
        "model": "m",
        "preset": "groq",
        "base_url": "http://127.0.0.1:9/v1",
        "api_keys": ["mine"],
    }
    recipe, chat = load(tmp_path, provider, {"GROQ_API_KEY": "not-this-one"})
    assert recipe.api_keys == ("mine",)
    assert str(chat.url) == "http://127.0.0.1:9/v1/chat/completions"


def test_openai_reads_openai_api_key_and_a_custom_server_needs_none(tmp_path: Path):
    recipe, _ = load(tmp_path, {"name": "openai", "model": "m"}, {"OPENAI_API_KEY": "sk-o"})
    assert recipe.api_keys == ("sk-o",) and "sk-o" in recipe.secrets
    with pytest.raises(RecipeError, match="OPENAI_API_KEY is not set"):
        load(tmp_path, {"name": "openai", "model": "m"}, {})
    recipe, _ = load(tmp_path, {"name": "openai", "model": "m", "base_url": "http://h/v1"}, {})
    assert recipe.api_keys == ()
    provider = {"name": "openai", "model": "m", "base_url": "http://h/v1", "api_key_env": "MY_K"}
    assert load(tmp_path, provider, {"MY_K": "k2"})[0].api_keys == ("k2",)
    with pytest.raises(RecipeError, match="MY_K is not set"):
        load(tmp_path, provider, {})


def quirky(preset: str) -> tuple[OpenAIChat, list[str]]:
    warnings: list[str] = []
    context = ComponentContext(Path("."), "t", warnings.append)
    return OpenAIChat({"model": "m", "preset": preset}, context), warnings


def test_quirks_rename_and_drop_keys_with_one_warning_each():
    generation = freeze({"seed": 4, "max_completion_tokens": 9, "logprobs": True, "n": 2})
    mistral, warnings = quirky("mistral")
    for _ in range(3):
        body = mistral.body(Prompt("a", PROMPT, generation))
        assert body["random_seed"] == 4 and body["max_tokens"] == 9 and body["n"] == 2
        assert {"seed", "max_completion_tokens", "logprobs"}.isdisjoint(body)
    assert warnings == ["generation.logprobs is not supported by the Mistral AI preset; dropped"]
    groq, warnings = quirky("groq")
    body = groq.body(Prompt("a", PROMPT, generation))
    assert body["seed"] == 4 and body["max_completion_tokens"] == 9
    assert {"n", "logprobs"}.isdisjoint(body) and len(warnings) == 2


def test_a_missing_key_variable_stops_the_cli_before_any_call(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": "x"}])
    provider = {"name": "openai", "model": "m", "preset": "deepseek"}
    recipe = write_recipe(tmp_path, basic_recipe(provider))
    env = {"DEEPSEEK_API_KEY": ""}
    result = read_cli("validate", str(recipe), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert f"{recipe}:" in result.stderr and "DEEPSEEK_API_KEY is not set" in result.stderr
    assert "provider 'openai' (preset deepseek)" in result.stderr
