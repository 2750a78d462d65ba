"""Meta-tests: docs, schema file and public names stay in step with the code."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import llmrun
from llmrun import hookspecs
from llmrun.plugins import load_registry
from llmrun.schema import base_schema, composed_schema

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
