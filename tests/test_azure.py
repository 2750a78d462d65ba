"""The `azure-openai` provider against the fake server's deployment paths: URL with the
deployment and api-version, the api-key header or a bearer token, keys kept secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmrun.builtins.azure import AzureOpenAIChat
from llmrun.recipe.model import freeze
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext, Prompt

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe

KEY = "azure-key-0123456789abcdef"


def azure(server: FakeOpenAI, **options: Any) -> dict[str, Any]:
    endpoint = server.url.removesuffix("/v1")  # Azure paths hang off the resource's root
    return {"name": "azure-openai", "endpoint": endpoint, "deployment": "gpt-dep", **options}


def provider(**options: Any) -> AzureOpenAIChat:
    base = {"endpoint": "https://res.openai.azure.com/", "deployment": "my dep", **options}
    return AzureOpenAIChat(base, ComponentContext(Path("."), "t"))


def test_the_url_names_the_deployment_and_the_api_version():
    request = provider().build_request(
        Prompt("a", [{"role": "user", "content": "hi"}], freeze({})), "k"
    )
    assert str(request.url) == (
        "https://res.openai.azure.com/openai/deployments/my%20dep/chat/completions"
        "?api-version=2024-10-21"
    )
    assert request.headers["api-key"] == "k" and "authorization" not in request.headers
    bearer = provider(auth="bearer", api_version="2025-01-01-preview", model="gpt-4o")
    request = bearer.build_request(
        Prompt("a", [{"role": "user", "content": "hi"}], freeze({})), "t"
    )
    assert request.url.params["api-version"] == "2025-01-01-preview"
    assert request.headers["authorization"] == "Bearer t" and "api-key" not in request.headers
    assert bearer.model == "gpt-4o" and provider().model == "my dep"


def test_a_run_against_a_deployment_with_a_bearer_token(tmp_path: Path):
    # The api-key header is run end to end in test_openai_family (one recipe, many providers).
    with FakeOpenAI(api_keys={KEY}) as server:
        write_jsonl(tmp_path / "data.jsonl", make_records(4))
        recipe = write_recipe(
            tmp_path, basic_recipe(azure(server, auth="bearer"), generation={"temperature": 0})
        )
        env = {"AZURE_OPENAI_AD_TOKEN": KEY}
        # An Azure token goes to *.openai.azure.com only, unless the user confirms the host.
        result = run_cli("run", str(recipe), "--allow-host", "127.0.0.1", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert len(server.requests) == 4
        for request in server.requests:
            assert request.path == "/openai/deployments/gpt-dep/chat/completions"
            assert request.query == "api-version=2024-10-21"
            assert request.headers["authorization"] == f"Bearer {KEY}"
            assert "api-key" not in request.headers
            assert request.body["temperature"] == 0 and request.body["model"] == "gpt-dep"
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["status"] for row in rows] == ["ok"] * 4
    assert all(row["response"]["model"] == "gpt-dep" for row in rows)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "recipe.yaml":
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert KEY not in result.stderr + result.stdout


def test_a_wrong_key_is_retired_and_the_run_stops(tmp_path: Path):
    with FakeOpenAI(api_keys={KEY}) as server:
        write_jsonl(tmp_path / "data.jsonl", make_records(3))
        provider_section = {**azure(server), "api_keys": ["wrong-key-000000"]}
        recipe = write_recipe(tmp_path, basic_recipe(provider_section))
        result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Access denied due to invalid subscription key" in result.stderr
    assert "wrong-key-000000" not in result.stderr
