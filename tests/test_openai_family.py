"""One recipe, changed only in `provider:`, runs against openai, a preset, azure-openai and
openai-completions on the fake server; each request is checked field by field and against its
schema in the OpenAI spec (chat, completions, embeddings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmrun.builtins.openai_embeddings import OpenAIEmbeddings
from llmrun.recipe.model import freeze
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_openai_spec import SPEC_URI, ChatSpec
from .test_openai_spec import spec as chat_spec  # noqa: F401  (the fixture)

KEY = "sk-family-0123456789abcdef"
GENERATION = {"temperature": 0, "max_completion_tokens": 40, "seed": 3, "stop": ["\n\n"]}


class Specs:
    """Validators for the request schemas of the OpenAI spec, by schema name."""

    def __init__(self, chat: ChatSpec) -> None:
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(chat.document)
        )
        self.chat = chat
        self._registry = registry

    def problems(self, name: str, body: dict[str, Any]) -> list[str]:
        if name == "CreateChatCompletionRequest":
            return self.chat.problems(body)
        ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
        validator = jsonschema.Draft202012Validator(ref, registry=self._registry)
        found = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        known = set(self.chat.schemas[name].get("properties", {}))
        return found + [f"{k}: not a {name} property" for k in sorted(set(body) - known)]


@pytest.fixture(scope="module")
def specs(chat_spec: ChatSpec) -> Iterator[Specs]:  # noqa: F811
    yield Specs(chat_spec)


def azure_provider(server: FakeOpenAI) -> dict[str, Any]:
    return {
        "name": "azure-openai",
        "endpoint": server.url.removesuffix("/v1"),
        "deployment": "gpt-dep",
        "model": "gpt-4o-mini",
    }


# name -> (provider section, environment, path, auth header, expected body besides messages)
CASES: dict[str, Any] = {
    "openai": (
        lambda s: {"name": "openai", "base_url": s.url, "model": "gpt-4o-mini"},
        {"OPENAI_API_KEY": ""},  # a custom base_url needs no key variable
        "/v1/chat/completions",
        ("authorization", f"Bearer {KEY}"),
        {**GENERATION},
    ),
    "preset deepseek": (
        lambda s: {"name": "openai", "preset": "deepseek", "base_url": s.url, "model": "ds-chat"},
        {"DEEPSEEK_API_KEY": KEY},
        "/v1/chat/completions",
        ("authorization", f"Bearer {KEY}"),
        # its quirks: max_completion_tokens is max_tokens there, seed is not taken
        {"temperature": 0, "max_tokens": 40, "stop": ["\n\n"]},
    ),
    "azure-openai": (
        azure_provider,
        {"AZURE_OPENAI_API_KEY": KEY},
        "/openai/deployments/gpt-dep/chat/completions",
        ("api-key", KEY),
        {**GENERATION},
    ),
    "openai-completions": (
        lambda s: {"name": "openai-completions", "base_url": s.url, "model": "gpt-3.5-instruct"},
        {},
        "/v1/completions",
        ("authorization", f"Bearer {KEY}"),
        {"temperature": 0, "max_tokens": 40, "seed": 3, "stop": ["\n\n"]},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_recipe_many_providers(tmp_path: Path, specs: Specs, name: str):
    make_provider, env, path, (header, value), expected = CASES[name]
    records = make_records(3)
    write_jsonl(tmp_path / "data.jsonl", records)
    with FakeOpenAI(api_keys={KEY}) as server:
        provider = make_provider(server)
        if not any(env.values()):
            provider["api_keys"] = [KEY]
        recipe = write_recipe(tmp_path, basic_recipe(provider, generation=GENERATION))
        # The key of a known service goes to the fake server only once the host is confirmed.
        result = run_cli("run", str(recipe), "--allow-host", "127.0.0.1", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        requests = list(server.requests)
    assert len(requests) == 3
    by_text = {r["text"]: r["id"] for r in records}
    for request in requests:
        assert request.path == path and request.headers[header] == value
        body = dict(request.body)
        if name == "openai-completions":
            prompt = body.pop("prompt")
            record = next(t for t in by_text if prompt.endswith(t))
            assert prompt == f"You are terse.\n\nid={by_text[record]} {record}"
            assert specs.problems("CreateCompletionRequest", request.body) == []
        else:
            messages = body.pop("messages")
            assert messages[0] == {"role": "system", "content": "You are terse."}
            assert messages[1]["role"] == "user" and messages[1]["content"].startswith("id=r")
            assert specs.problems("CreateChatCompletionRequest", request.body) == []
        assert body.pop("model") == provider["model"]
        assert body == expected
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == [r["id"] for r in records]
    for row in rows:
        assert row["status"] == "ok" and row["text"].startswith("echo: ")
        assert f"id={row['id']} {row['record']['text']}" in row["text"]
    if name == "preset deepseek":
        assert result.stderr.count("generation.seed is not supported by the DeepSeek") == 1
    else:
        assert "is not supported" not in result.stderr
    assert KEY not in result.stderr


def test_embeddings_bodies_match_the_spec(specs: Specs):
    provider = OpenAIEmbeddings(
        {"model": "text-embedding-3-small", "dimensions": 64, "batch_size": 3},
        ComponentContext(Path("."), "t"),
    )
    members = tuple(
        Prompt(f"r{i}", [{"role": "user", "content": f"text {i}"}], freeze({})) for i in range(3)
    )
    body = provider.body(Prompt("r0", [], freeze({}), group=members))
    assert body["input"] == ["text 0", "text 1", "text 2"]
    assert specs.problems("CreateEmbeddingRequest", body) == []
    body["inputs"] = body.pop("input")
    assert specs.problems("CreateEmbeddingRequest", body), "the check let a wrong body through"


def test_completion_logprobs_become_a_count_and_images_are_left_out(specs: Specs):
    from llmrun.builtins.openai_completions import OpenAICompletions

    warnings: list[str] = []
    provider = OpenAICompletions(
        {"model": "m", "base_url": "http://h/v1"}, ComponentContext(Path("."), "t", warnings.append)
    )
    generation = freeze({"logprobs": True, "top_logprobs": 3, "n": 2, "tools": []})
    body = provider.body(Prompt("r", [{"role": "user", "content": "hi"}], generation))
    assert body == {"model": "m", "prompt": "hi", "logprobs": 3, "n": 2}
    assert specs.problems("CreateCompletionRequest", body) == []
    assert warnings == ["generation.tools is not supported by openai-completions; dropped"]
    parts = [{"type": "text", "text": "what is"}, {"type": "image", "source": "/x.png"}]
    for _ in range(2):
        body = provider.body(Prompt("r", [{"role": "user", "content": parts}], generation))
        assert body["prompt"] == "what is"
    assert warnings[1:] == ["openai-completions sends text only: images are left out"]


def provider_snippets() -> list[tuple[str, dict[str, Any]]]:
    """Every ```yaml block of docs/providers.md that has a `provider:` (section, parsed)."""
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs/providers.md").read_text(encoding="utf-8")
    found = []
    section = ""
    for heading, block in re.findall(r"^## ([^\n]+)$|```yaml\n(.*?)```", text, re.M | re.S):
        section = heading or section
        data = yaml.safe_load(block) if block else None
        if isinstance(data, dict) and "provider" in data:
            found.append((section or "intro", data))
    return found


def test_every_provider_snippet_in_the_docs_is_a_valid_recipe(tmp_path: Path):
    from llmrun.api import open_recipe

    snippets = provider_snippets()
    assert {s for s, _ in snippets} >= {
        "openai",
        "openai-completions",
        "openai-embeddings",
        "azure-openai",
    }
    environ = {
        name: "k"
        for name in ("OPENAI", "DEEPSEEK", "AZURE_OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE")
        for name in [f"{name}_API_KEY"]
    } | {"EAST_KEY": "k", "WEST_KEY": "k"}  # provider.endpoints' region keys
    write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": "x"}])
    for section, snippet in snippets:
        recipe = {
            "data": {"path": "data.jsonl", "id": "id"},
            "prompt": "{{ text }}",
            "output": {"path": "out.jsonl"},
            **{k: v for k, v in snippet.items() if k in ("provider", "generation")},
        }
        loaded, _ = open_recipe(write_recipe(tmp_path, recipe), environ=environ)
        assert loaded.provider.name == snippet["provider"]["name"], section


def test_the_fake_server_answers_completions_embeddings_and_azure_as_the_apis_do(
    fake_openai: FakeOpenAI,
):
    import httpx

    root = fake_openai.url.removesuffix("/v1")
    with httpx.Client() as client:
        no_version = client.post(f"{root}/openai/deployments/d/chat/completions", json={})
        assert no_version.status_code == 404
        assert no_version.json() == {"error": {"code": "404", "message": "Resource not found"}}
        embedded = client.post(
            f"{root}/openai/deployments/emb/embeddings?api-version=2024-10-21",
            json={"input": ["a b", "c"]},
        ).json()
        assert [d["index"] for d in embedded["data"]] == [0, 1]
        assert embedded["model"] == "emb" and embedded["usage"]["prompt_tokens"] == 3
        bad = client.post(f"{fake_openai.url}/embeddings", json={"model": "m", "input": [""]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
        done = client.post(
            f"{fake_openai.url}/completions",
            json={"model": "m", "prompt": "a b c", "max_tokens": 2},
        ).json()
        assert done["object"] == "text_completion"
        assert done["choices"][0] == {
            "text": "echo: a",
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }
