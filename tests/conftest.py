"""Shared fixtures: a fake OpenAI-compatible server on 127.0.0.1, recipe files, the real CLI."""

from __future__ import annotations

import compileall
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

from llmrun.testing.fake_openai import FakeOpenAI

# Tests never load plugins installed in the environment unless a test asks for them.
os.environ["LLMRUN_PLUGINS"] = ""


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller has done this
    # The suite starts some hundreds of llmrun processes (the real command, plugins' workers).
    # Where PYTHONDONTWRITEBYTECODE is set, as in many CI images, each one compiled llmrun's
    # source anew: about 60 ms of CPU a process, a sixth of the CLI tests' CPU. Python still
    # reads the bytecode it finds, so it is written here once, as an import would without it.
    root = Path(__file__).resolve().parents[1]
    for package in (root / "llmrun", *root.glob("plugins/*/llmrun_*")):
        compileall.compile_dir(package, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest first: pytest-xdist hands tests out in collection order, so a 3-minute test
    # collected late (llmrun-ray's own suite) ran alone at the end while the other worker sat
    # idle; started first, it runs beside the rest (with --dist worksteal, the README's: plain
    # load scheduling gives the first worker the first quarter of the tests, every slow one). A
    # slow mark may say how long its test takes (``slow(seconds=...)``, on a loaded 2-core
    # machine); the sort is stable otherwise.
    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.kwargs.get("seconds", 10))

    items.sort(key=seconds, reverse=True)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started fake server (any key accepted, no latency); tests may set attributes."""
    with FakeOpenAI() as server:
        yield server


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def make_records(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:05d}", "text": f"record number {i}"} for i in range(n)]


def write_recipe(folder: Path, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def basic_recipe(provider: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A small recipe over data.jsonl (id field `id`, prompt uses `id` and `text`)."""
    recipe: dict[str, Any] = {
        "name": "test",
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": {"system": "You are terse.", "user": "id={{ id }} {{ text }}"},
        "provider": provider,
        "run": {"concurrency": 8, "max_retries": 2},
        "output": {"path": "out.jsonl"},
    }
    recipe.update(overrides)
    return recipe


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real `llmrun` command, as installed in this environment, in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*llmrun_command(), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def llmrun_command() -> list[str]:
    """The installed console script beside this Python (or `python -m llmrun` without one)."""
    script = Path(sys.executable).parent / "llmrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]


def read_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A command that only reads (validate, plan, status, schema) run in this process through
    the CLI's own ``main``: the same parsing, messages and exit codes as ``run_cli`` without a
    second of interpreter start-up per call. ``timeout`` is accepted for symmetry only."""
    from llmrun.commands.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, as the process would exit
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["llmrun", *args], code, out.getvalue(), err.getvalue())


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder ``build`` fills once for the whole run, whichever pytest-xdist worker asks first;
    the others wait for it, then share it.

    An ``xdist_group`` mark was to keep such tests in one worker, but pytest 9 ignores the group
    pytest-xdist 3.8 writes into each test's id: the tests spread anyway, and every worker built
    its own folder (two venvs of Ray and pyarrow in CI). Built once here, the tests spread over
    the workers like any others."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's base is <run>/popen-gwN: <run> is shared
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
