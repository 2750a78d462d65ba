"""Fixtures for testing llmrun plugins the way llmrun tests itself (a ``pytest11`` plugin).

Installed with llmrun, so any test suite can use them without a conftest:

- ``llmrun_registry(**plugins)``: a registry of the built-ins plus only the plugins given (name ->
  module), never the entry points installed in the environment.
- ``llmrun_fake_openai``: a started ``llmrun.testing.fake_openai.FakeOpenAI`` on 127.0.0.1
  (its ``url`` goes in a recipe's ``provider.base_url``).
- ``llmrun_run(recipe, records, ...)``: writes the recipe (with defaults filled in: the ``mock``
  provider, ``data.jsonl``, ``out.jsonl``, prompt ``{{ text }}``) and the records into the
  test's folder, runs it through the Python API (``plugins=`` brings in the plugins under test)
  or the real ``llmrun`` command (``cli=True``), and returns a ``RecipeRun`` with the rows.

Every name starts with ``llmrun_`` so none clashes with a project's own fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..plugins import Registry
    from .fake_openai import FakeOpenAI


@dataclass
class RecipeRun:
    """How a recipe run ended: the rows written, the exit code (0 all ok, 1 some error rows,
    see ``llmrun --help``), the summary and, for ``cli=True``, what the command printed."""

    rows: list[dict[str, Any]]
    exit_code: int
    summary: dict[str, Any]
    recipe_path: Path
    output_path: Path
    stderr: str = ""
    warnings: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(row["id"]): row for row in self.rows}


def complete_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe with what a test leaves out filled in (mock provider, data.jsonl, out.jsonl)."""
    full: dict[str, Any] = {
        "name": "test",
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": "{{ text }}",
        "provider": {"name": "mock"},
        "output": {"path": "out.jsonl"},
    }
    full.update(recipe)
    return full


def run_recipe_in(
    folder: Path,
    recipe: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    plugins: Mapping[str, object] | None = None,
    cli: bool = False,
    entry_points: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    allow_read: Sequence[Path] = (),
) -> RecipeRun:
    """Write ``recipe`` (and ``records`` as data.jsonl) into ``folder`` and run it.

    API mode loads only the built-ins and ``plugins``. CLI mode runs the installed ``llmrun``;
    ``entry_points`` sets ``LLMRUN_PLUGINS`` for it (None: the environment's own setting).
    ``allow_read``: folders beyond ``folder`` the recipe may read (``--allow-read``).
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    full = complete_recipe(recipe)
    if records is not None:
        with open(folder / "data.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    output = (folder / str(full["output"]["path"])).resolve()
    if cli:
        run_env = {**os.environ, **(env or {})}
        if entry_points is not None:
            run_env["LLMRUN_PLUGINS"] = entry_points
        done = subprocess.run(
            [
                *llmrun_command(),
                "run",
                str(path),
                "--json",
                "--quiet",
                *(f"--allow-read={p}" for p in allow_read),
                *args,
            ],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=300,
        )
        summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
        return RecipeRun(_rows(output), done.returncode, summary, path, output, done.stderr)
    from ..access import Access
    from ..api import run_recipe_sync
    from ..plugins import load_registry
    from ..recipe.load import load_recipe

    registry = load_registry(entry_points=False, plugins=plugins)
    access = Access(read_roots=tuple(Path(p).resolve() for p in allow_read))
    loaded = load_recipe(path, registry, overrides=list(args), environ=env, access=access)
    result = run_recipe_sync(loaded, registry=registry)
    # The exit code the command would give (llmrun/commands/main.py).
    errors = result.stats.error + result.stats.resumed_error
    code = {"aborted": 3, "interrupted": 130}.get(result.status, 1 if errors else 0)
    return RecipeRun(
        _rows(output), code, result.to_json(), path, output, warnings=list(result.warnings)
    )


def llmrun_command() -> list[str]:
    """The ``llmrun`` console script beside this Python (``python -m llmrun`` without one)."""
    script = Path(sys.executable).parent / "llmrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture
def llmrun_registry() -> Callable[..., Registry]:
    """``llmrun_registry(name=module, ...)``: the built-ins and only these plugins."""
    from ..plugins import load_registry

    def make(**plugins: object) -> Registry:
        registry = load_registry(entry_points=False, plugins=plugins)
        return registry

    return make


@pytest.fixture
def llmrun_fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on 127.0.0.1 (any key accepted), stopped afterwards."""
    from .fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def llmrun_run(tmp_path: Path) -> Callable[..., RecipeRun]:
    """``llmrun_run(recipe, records, plugins=..., cli=False)`` -> ``RecipeRun`` (see
    ``run_recipe_in``); each call runs in a fresh folder under the test's ``tmp_path``, and the
    recipe may read the files the test wrote in ``tmp_path`` (as with ``--allow-read``)."""
    calls = [0]

    def run(
        recipe: Mapping[str, Any],
        records: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> RecipeRun:
        calls[0] += 1
        kwargs.setdefault("allow_read", (tmp_path,))
        return run_recipe_in(tmp_path / f"run{calls[0]}", recipe, records, **kwargs)

    return run
