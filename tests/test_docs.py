"""Meta-tests: docs, schema file and public names stay in step with the code."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import llmrun
from llmrun import hookspecs
from llmrun.plugins import load_registry
from llmrun.recipe.schema import base_schema, composed_schema

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "llmrun_spec"))


def test_hooks_found() -> None:
    assert {
        "register_loaders",
        "register_providers",
        "register_postprocessors",
        "register_writers",
        "run_started",
        "record_done",
        "run_finished",
    } <= set(HOOKS)


def test_every_hook_is_documented_with_a_section() -> None:
    text = (ROOT / "docs/plugins.md").read_text(encoding="utf-8")
    missing = [h for h in HOOKS if f"## `{h}`" not in text]
    assert not missing, f"docs/plugins.md lacks a section for: {missing}"


def test_every_hook_is_documented_with_its_signature() -> None:
    """The section opens with the hook's call as the code declares it: its parameters, and for
    an observer the type of what it receives."""
    text = (ROOT / "docs/plugins.md").read_text(encoding="utf-8")
    wrong = []
    for name in HOOKS:
        spec = inspect.signature(getattr(hookspecs, name))
        call = f"`{name}({', '.join(spec.parameters)})`"
        section = text.split(f"## `{name}`", 1)[-1].split("\n## ", 1)[0]
        if call not in section:
            wrong.append(f"{name}: the section does not show {call}")
        for param in spec.parameters.values():
            annotation = str(param.annotation)
            if not annotation.startswith("Register") and f"`{annotation}`" not in section:
                wrong.append(f"{name}: the section does not name the type `{annotation}`")
    assert not wrong, "\n".join(wrong)


def test_every_hook_has_a_test() -> None:
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for p in (ROOT / "tests").glob("test_*.py")
        if p.name != "test_docs.py"
    )
    untested = [h for h in HOOKS if not re.search(rf"\bdef {h}\(", sources)]
    assert not untested, f"no test implements these hooks: {untested}"


def _key_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(sub, dict) and sub.get("type") == "object":
            paths.extend(_key_paths(sub, path + "."))
    return paths


def test_every_recipe_key_is_documented() -> None:
    text = (ROOT / "docs/recipes.md").read_text(encoding="utf-8")
    paths = _key_paths(base_schema())
    assert "run.concurrency" in paths and "output.path" in paths
    missing = [p for p in paths if f"`{p}`" not in text]
    assert not missing, f"docs/recipes.md does not mention: {missing}"


def test_schema_file_is_current() -> None:
    shipped = json.loads((ROOT / "schemas/recipe.schema.json").read_text(encoding="utf-8"))
    current = composed_schema(load_registry(entry_points=False))
    assert shipped == current, (
        "regenerate: LLMRUN_PLUGINS= llmrun schema > schemas/recipe.schema.json"
    )


def test_public_names_sorted_and_importable() -> None:
    assert llmrun.__all__ == sorted(llmrun.__all__)
    for name in llmrun.__all__:
        assert getattr(llmrun, name) is not None, name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- test-command -->\s*```sh\n(.*?)\n```", readme, re.S)
    assert block, "README.md lost its marked test command"
    extracted = subprocess.run(
        [
            "awk",
            "/<!-- test-command -->/{f=1; next} f && /^```sh/{g=1; next} g && /^```/{exit} "
            "g{print}",
            "README.md",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == block.group(1).strip()
    assert "awk '/<!-- test-command -->/" in (ROOT / ".ci/run").read_text(encoding="utf-8")
    quick = re.search(r"<!-- quickstart-command -->\s*```sh\n(.*?)\n```", readme, re.S)
    assert quick and "llmrun run recipes/quickstart.yaml" in quick.group(1)


def _subcommands() -> list[str]:
    from llmrun.commands.main import command_parsers

    return sorted(command_parsers())


def test_every_command_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = _subcommands()
    assert {"run", "validate", "plan", "lock", "init", "plugin"} <= set(commands)
    missing = [c for c in commands if not re.search(rf"^\| `llmrun {c}\b", readme, re.M)]
    assert not missing, f"README.md's command table lacks: {missing}"


def test_every_fixture_for_plugin_authors_is_documented() -> None:
    from llmrun.testing import pytest_plugin

    def is_fixture(value: object) -> bool:  # the marker's form differs across pytest versions
        return hasattr(value, "_fixture_function_marker") or "Fixture" in type(value).__name__

    fixtures = sorted(
        name
        for name, value in vars(pytest_plugin).items()
        if name.startswith("llmrun_") and is_fixture(value)
    )
    assert fixtures == ["llmrun_fake_openai", "llmrun_registry", "llmrun_run"]
    text = (ROOT / "docs/plugins.md").read_text(encoding="utf-8")
    missing = [f for f in fixtures if f"`{f}" not in text]
    assert not missing, f"docs/plugins.md does not document the fixtures: {missing}"


def test_sharing_guide_covers_the_workflow() -> None:
    text = (ROOT / "docs/sharing.md").read_text(encoding="utf-8")
    for needle in ("llmrun plan", "llmrun lock", "--locked", ".env", "llmrun init", "--preset"):
        assert needle in text, needle
    # Every flag of `plan`, `lock` and `init` is explained there.
    from llmrun.commands.main import command_parsers

    parsers = command_parsers()
    for name in ("plan", "lock", "init"):
        usage = parsers[name].format_usage()  # every option, each once, without the prose
        flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", usage)) - {"--help"}
        assert flags, name
        for flag in sorted(flags):
            assert f"`{flag}" in text or f"{flag} " in text, f"{name} {flag}"
