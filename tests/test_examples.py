"""Every example recipe in recipes/ runs end to end through the real CLI, with the provider
swapped for the `mock` by `--set` as its header says (embeddings: a fake server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llmrun.plugins import load_registry

from .conftest import llmrun_command, read_jsonl, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """recipes/ and schemas/ copied side by side, so outputs stay out of the repository."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("out"))
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    return tmp_path / "recipes"


def run_example(folder: Path, name: str, provider: str) -> list[dict[str, Any]]:
    done = run_cli("run", str(folder / name), "--quiet", f"--set=provider={provider}")
    assert done.returncode == 0, done.stderr
    recipe = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
    return read_jsonl(folder / recipe["output"]["path"])


def require(kind: str, name: str) -> None:
    """Fail clearly (never skip) when a component the example needs is not registered yet."""
    registry = load_registry(entry_points=False)
    assert name in registry.components[kind], (
        f"the {kind} {name!r} used by an example recipe is not registered "
        f"(built-in {kind}s: {sorted(registry.components[kind])})"
    )


def test_every_example_is_in_the_readme_and_says_what_it_was_written_for() -> None:
    readme = (ROOT / "recipes/README.md").read_text(encoding="utf-8")
    assert len(EXAMPLES) >= 7
    for name in EXAMPLES:
        assert f"[{name}]({name})" in readme, f"recipes/README.md does not list {name}"
        text = (ROOT / "recipes" / name).read_text(encoding="utf-8")
        assert text.startswith("# yaml-language-server: $schema=../schemas/recipe.schema.json")
        if name != "quickstart.yaml":
            assert "# Written for: " in text, f"{name} does not say what it was written for"


def test_sentiment(copy: Path) -> None:
    rows = run_example(
        copy, "sentiment.yaml", '{name: mock, replies: ["Positive.", "negative", "It is neutral."]}'
    )
    assert len(rows) == 300
    labels = {r["fields"]["sentiment"] for r in rows}
    assert labels == {"positive", "negative", "neutral"}
    assert all(r["text"] == r["fields"]["sentiment"] for r in rows)
    assert set(rows[0]["record"]) == {"product"}


def test_extraction_reasks_until_the_json_fits_the_schema(copy: Path) -> None:
    provider = "{name: mock, json_schema_file: data/contact.schema.json, bad_replies: 1}"
    rows = run_example(copy, "extraction.yaml", provider)
    schema = json.loads((copy / "data/contact.schema.json").read_text(encoding="utf-8"))
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok"
        jsonschema.validate(row["fields"], schema)
        assert row["attempts"] == 2 and row["response"]["reasks"] == 1


def test_translation_drops_the_thinking(copy: Path) -> None:
    provider = '{name: mock, replies: ["<think>Short and polite.</think>\\nBonjour !"]}'
    rows = run_example(copy, "translation.yaml", provider)
    assert len(rows) == 5
    assert {r["text"] for r in rows} == {"Bonjour !"}
    assert {r["fields"]["translation"] for r in rows} == {"Bonjour !"}


def test_judge_takes_the_verdict(copy: Path) -> None:
    replies = '["A is accurate. Winner: A", "Both are right. winner: TIE", "B works. Winner: B"]'
    rows = run_example(copy, "judge.yaml", f"{{name: mock, replies: {replies}}}")
    assert len(rows) == 5
    for row in rows:
        assert row["fields"]["winner"].lower() in {"a", "b", "tie"}
        assert row["fields"]["winner"] in row["fields"]["reasoning"]


def test_captioning_with_the_files_loader(copy: Path) -> None:
    require("loader", "files")
    rows = run_example(copy, "captioning.yaml", '{name: mock, replies: ["A coloured square."]}')
    assert sorted(r["id"] for r in rows) == [
        f"data/images/{c}-square.png" for c in ("blue", "green", "red")
    ]
    assert {r["text"] for r in rows} == {"A coloured square."}


def test_embeddings_against_a_local_server(copy: Path) -> None:
    require("provider", "openai-embeddings")
    # As recipes/README.md says: the fake server started as a command, and no key at all.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    stats = copy / "server-stats.json"
    command = [sys.executable, "-m", "llmrun.testing.fake_openai", "--port", "0"]
    command += ["--stats-file", str(stats)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
            url_set = f"provider.base_url={url}"
            done = subprocess.run(
                [*llmrun_command(), "run", str(copy / "embeddings.yaml"), "-q", f"--set={url_set}"],
                env=environ,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        finally:
            server.terminate()
    assert json.loads(stats.read_text(encoding="utf-8"))["requests"] == 1  # 5 phrases, 1 request
    rows = read_jsonl(copy / "out/embeddings.jsonl")
    assert len(rows) == 5
    for row in rows:
        vector = row["response"]["vector"]
        assert vector and all(isinstance(x, float) for x in vector)


def test_judge_and_refine_with_the_mock(copy: Path) -> None:
    replies = '["Thank you for telling us. Score: 5", "Glad you like it! Score: 2"]'
    rows = run_example(copy, "judge-and-refine.yaml", f"{{name: mock, replies: {replies}}}")
    assert len(rows) == 300 and all(r["status"] == "ok" for r in rows)
    refined = [r for r in rows if r["steps"]["refine"]["status"] == "ok"]
    assert refined and len(refined) < 300
    for row in rows:
        low = int(row["steps"]["judge"]["fields"]["score"]) < 4
        assert (row["steps"]["refine"]["status"] == "ok") == low
        assert row["text"] == row["steps"]["refine" if low else "judge"]["text"]


def test_judge_and_refine_against_the_fake_openai_server(copy: Path) -> None:
    from llmrun.testing.fake_openai import FakeOpenAI

    def reply(body: Any) -> str:
        system = str(body["messages"][0]["content"])
        if system.startswith("You grade"):
            assert body["model"] == "gpt-4o"  # the judge step's own model
            return "Polite, but it does not answer the review.\nScore: 2"
        return f"Thanks for your review ({len(body['messages'][-1]['content'])} chars)."

    with FakeOpenAI(reply=reply) as server:
        provider = f"{{name: openai, base_url: '{server.url}', model: gpt-4o-mini, api_keys: [k]}}"
        rows = run_example(copy, "judge-and-refine.yaml", provider)
        # A draft, a grade and a rewrite (all are graded below 4) for every review; reviews
        # that are word for word the same send one request, the others come from the cache.
        cached = sum(s["cached"] for row in rows for s in row["steps"].values())
        assert server.count() + cached == 3 * 300 and server.count() > 2 * 300
        sent = server.count()
        again = run_cli(
            "run",
            str(copy / "judge-and-refine.yaml"),
            "--quiet",
            "--fresh",
            f"--set=provider={provider}",
        )
        assert again.returncode == 0, again.stderr
        assert server.count() == sent  # the recipe's call cache answered every request
    assert len(rows) == 300
    for row in rows:
        assert row["status"] == "ok" and row["steps"]["judge"]["fields"] == {"score": "2"}
        assert row["text"] == row["steps"]["refine"]["text"]
