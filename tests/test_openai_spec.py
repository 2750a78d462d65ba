"""Every request body the `openai` provider builds is one the real API accepts: each is checked
against CreateChatCompletionRequest in the official OpenAPI document (tests/specs/)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from llmrun.api import open_recipe
from llmrun.recipe.templates import PromptTemplate
from llmrun.run.engine import build_component
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext

from .conftest import basic_recipe, read_jsonl, run_cli, write_jsonl, write_recipe
from .test_run import openai, record_id_of

# The spec ships with the tests (MIT, tests/specs/README.md); LLMRUN_OPENAI_SPEC can point at
# a newer copy.
SPEC = Path(
    os.environ.get("LLMRUN_OPENAI_SPEC")
    or Path(__file__).resolve().parent / "specs" / "openai-openapi.yaml"
)
SPEC_URI = "https://llmrun.test/openai-openapi.yaml"
REQUEST = "CreateChatCompletionRequest"


class ChatSpec:
    """The OpenAPI document (3.1, so JSON Schema 2020-12) with a validator for one schema."""

    def __init__(self, path: Path) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, encoding="utf-8") as fh:
            self.document: dict[str, Any] = yaml.load(fh, Loader=loader)
        self.schemas: dict[str, Any] = self.document["components"]["schemas"]
        registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(self.document)
        )
        self.validator = jsonschema.Draft202012Validator(
            {"$ref": f"{SPEC_URI}#/components/schemas/{REQUEST}"}, registry=registry
        )
        self.properties = self._properties(self.schemas[REQUEST])

    def _properties(self, schema: dict[str, Any]) -> set[str]:
        """Every top-level property the schema names, through allOf and $ref."""
        if "$ref" in schema:
            return self._properties(self.schemas[schema["$ref"].rsplit("/", 1)[1]])
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            names |= self._properties(part)
        return names

    def problems(self, body: dict[str, Any]) -> list[str]:
        """Schema violations, and keys the API does not define (the schema itself would let
        a misspelt option through: it does not forbid additional properties)."""
        found = [
            f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in self.validator.iter_errors(body)
        ]
        found += [f"{key}: not a {REQUEST} property" for key in sorted(set(body) - self.properties)]
        return found


@functools.cache
def load_spec(path: Path) -> ChatSpec:
    """Read once per test session (a 3 MB document); the modules that check bodies share it."""
    return ChatSpec(path)


@pytest.fixture(scope="module")
def spec() -> Iterator[ChatSpec]:
    if not SPEC.is_file():  # it ships with the tests: a missing spec must not pass quietly
        pytest.fail(f"the OpenAI OpenAPI document is not at {SPEC}")
    yield load_spec(SPEC)


RECORD = {"id": "rec-1", "text": "Le café était froid ☕", "tags": ["a", "b"], "n": 3}

CASES: dict[str, dict[str, Any]] = {
    "system and user": {
        "prompt": {"system": "You are terse.", "user": "id={{ id }} {{ text }}"},
    },
    "user string only": {"prompt": "Classify: {{ text }}"},
    "messages list (few-shot, developer role)": {
        "prompt": {
            "messages": [
                {"role": "developer", "content": "Answer with one word."},
                {"role": "system", "content": "You label sentiment."},
                {"role": "user", "content": "The soup was great."},
                {"role": "assistant", "content": "positive"},
                {"role": "user", "content": "{% for t in tags %}[{{ t }}]{% endfor %} {{ text }}"},
            ]
        },
    },
    "every generation option": {
        "generation": {
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["\n\n", "END"],
            "seed": 1234,
            "n": 2,
            "presence_penalty": -0.5,
            "frequency_penalty": 1.5,
        },
    },
    "generation bounds and stop as a string": {
        "generation": {
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 1,
            "stop": "###",
            "presence_penalty": 2,
            "frequency_penalty": -2,
        },
    },
    "extra_body": {
        "provider_options": {
            "extra_body": {
                "user": "llmrun-test",
                "service_tier": "auto",
                "logprobs": True,
                "top_logprobs": 3,
                "response_format": {"type": "json_object"},
                "max_completion_tokens": 32,
                "store": False,
                "metadata": {"job": "spec-test"},
            },
            "organization": "org-test",
            "headers": {"X-Team": "labels"},
        },
        "generation": {"temperature": 0.2},
    },
}


def build_body(folder: Path, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers the openai provider builds for RECORD under the case's recipe."""
    provider = {
        "name": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "gpt-4o-mini",
        **case.get("provider_options", {}),
    }
    data = basic_recipe(provider)
    data.update({k: v for k, v in case.items() if k != "provider_options"})
    write_jsonl(folder / "data.jsonl", [RECORD])
    recipe, registry = open_recipe(write_recipe(folder, data))
    context = ComponentContext(recipe.base_dir, recipe.name)
    chat = build_component(registry, "provider", recipe.provider, context)
    template = PromptTemplate(recipe.messages, recipe.generation, recipe.base_dir)
    request = chat.build_request(template.render("rec-1", RECORD), "sk-spec-test")
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1:9/v1/chat/completions"
    return json.loads(request.content), dict(request.headers)


@pytest.mark.parametrize("name", list(CASES))
def test_request_bodies_match_the_openai_spec(tmp_path: Path, spec: ChatSpec, name: str) -> None:
    body, headers = build_body(tmp_path, CASES[name])
    assert spec.problems(body) == []
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][-1]["role"] == "user"
    assert headers["authorization"] == "Bearer sk-spec-test"
    assert headers["content-type"] == "application/json"
    for key, value in CASES[name].get("generation", {}).items():
        assert body[key] == value  # arrives as set (a tuple in the recipe is a list on the wire)
    for key, value in CASES[name].get("provider_options", {}).get("extra_body", {}).items():
        assert body[key] == value
    if "provider_options" in CASES[name]:
        assert headers["openai-organization"] == "org-test"
        assert headers["x-team"] == "labels"


def test_messages_render_in_order_with_their_roles(tmp_path: Path, spec: ChatSpec) -> None:
    body, _ = build_body(tmp_path, CASES["messages list (few-shot, developer role)"])
    assert body["messages"] == [
        {"role": "developer", "content": "Answer with one word."},
        {"role": "system", "content": "You label sentiment."},
        {"role": "user", "content": "The soup was great."},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "[a][b] Le café était froid ☕"},
    ]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda b: b.update(temperature="0.5"), "temperature"),
        (lambda b: b["messages"][0].pop("role"), "messages/0"),
        (lambda b: b.pop("model"), "'model' is a required property"),
        (lambda b: b.update(messages=[]), "messages"),
        (lambda b: b.update(n=0), "n"),
        (lambda b: b.update(max_token=16), "max_token: not a"),
    ],
    ids=[
        "temperature as a string",
        "message without role",
        "no model",
        "no messages",
        "n=0",
        "misspelt option",
    ],
)
def test_a_wrong_body_fails_the_check(
    tmp_path: Path, spec: ChatSpec, change: Any, complaint: str
) -> None:
    body, _ = build_body(tmp_path, CASES["system and user"])
    assert spec.problems(body) == []
    change(body)
    problems = spec.problems(body)
    assert problems, "the check let a wrong body through"
    assert any(complaint in p for p in problems), problems


def test_every_body_sent_in_a_real_run_matches_the_spec(
    tmp_path: Path, spec: ChatSpec, fake_openai: FakeOpenAI
) -> None:
    records = [
        {"id": f"r{i}", "text": t}
        for i, t in enumerate(["plain", 'quotes " and \\ slashes', "ünïcödé ✓", "new\nline", ""])
    ]
    write_jsonl(tmp_path / "data.jsonl", records)
    recipe = write_recipe(
        tmp_path,
        basic_recipe(
            openai(fake_openai, extra_body={"user": "llmrun"}),
            generation=CASES["every generation option"]["generation"],
        ),
    )
    result = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5
    assert sorted(record_id_of(r) or "" for r in fake_openai.requests) == [r["id"] for r in records]
    for request in fake_openai.requests:
        assert spec.problems(request.body) == []
