"""`llmrun lock` and `llmrun run [--locked]`: what ran is recorded, and drift is caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llmrun
from llmrun.job.lockfile import drift, installed_plugins

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe

SECRET = "sk-lock-test-0123456789abcdef"


def setup(tmp_path: Path, **overrides: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", make_records(3))
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rules.txt").write_text("Be terse.", encoding="utf-8")
    (tmp_path / "parts" / "system.txt").write_text(
        '{% include "parts/rules.txt" %} You label text.', encoding="utf-8"
    )
    recipe = basic_recipe(
        {"name": "mock", "model": "mock", "replies": ["fine"]},
        prompt={"system": '{% include "parts/system.txt" %}', "user": "{{ text }}"},
        **overrides,
    )
    return write_recipe(tmp_path, recipe)


def lock(recipe: Path) -> dict[str, Any]:
    result = run_cli("lock", str(recipe))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(recipe.with_suffix(".lock").read_text(encoding="utf-8"))
    return data


def test_lock_records_versions_hashes_and_models(tmp_path: Path):
    recipe = setup(tmp_path)
    data = lock(recipe)
    assert recipe.with_suffix(".lock").name == "recipe.lock"
    assert data["llmrun"] == {"version": llmrun.__version__, "plugin_api": llmrun.PLUGIN_API}
    assert data["models"] == ["mock"]
    assert data["components"]["data"] == {
        "kind": "loader",
        "name": "jsonl",
        "package": "llmrun",
        "version": llmrun.__version__,
    }
    assert data["components"]["provider"]["name"] == "mock"
    # Data, and every template the prompt includes, followed through nested includes.
    assert set(data["files"]) == {"data.jsonl", "parts/system.txt", "parts/rules.txt"}
    assert all(len(h) == 64 for h in data["files"].values())
    assert data["installed_plugins"] == installed_plugins()
    assert len(data["job_hash"]) == 16


def test_run_locked_passes_when_nothing_drifted(tmp_path: Path):
    recipe = setup(tmp_path)
    lock(recipe)
    # Run settings decide no result: changing them is not drift.
    result = run_cli("run", str(recipe), "--locked", "--quiet", "--set", "run.concurrency=2")
    assert result.returncode == 0, result.stderr
    assert "differs from the lock" not in result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 3
    check = run_cli("lock", str(recipe), "--check")
    assert check.returncode == 0 and "up to date" in check.stderr


def test_drift_warns_and_locked_refuses_listing_every_change(tmp_path: Path):
    recipe = setup(tmp_path)
    lock(recipe)
    write_jsonl(tmp_path / "data.jsonl", make_records(4))
    (tmp_path / "parts" / "rules.txt").write_text("Be verbose.", encoding="utf-8")
    refused = run_cli("run", str(recipe), "--locked", "--quiet", "--set", "provider.model=other")
    assert refused.returncode == 2
    err = refused.stderr
    assert "file data.jsonl: locked sha256" in err
    assert "file parts/rules.txt: locked sha256" in err
    assert "models: locked ['mock'], now ['other']" in err
    assert "the job changed" in err
    assert "llmrun lock recipe.yaml" in err
    assert not (tmp_path / "out.jsonl").exists()  # nothing ran

    warned = run_cli("run", str(recipe), "--quiet")
    assert warned.returncode == 0, warned.stderr
    assert "warning: differs from the lock: file data.jsonl" in warned.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4

    check = run_cli("lock", str(recipe), "--check")
    assert check.returncode == 2 and "file data.jsonl" in check.stderr
    lock(recipe)  # accept the changes
    again = run_cli("run", str(recipe), "--locked", "--quiet")
    assert again.returncode == 0, again.stderr


def test_locked_without_a_lock_refuses(tmp_path: Path):
    recipe = setup(tmp_path)
    result = run_cli("run", str(recipe), "--locked")
    assert result.returncode == 2
    assert "--locked, but there is no lock; write one with `llmrun lock recipe.yaml`" in (
        result.stderr
    )


def test_lock_never_holds_a_key(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", make_records(1))
    recipe = write_recipe(
        tmp_path,
        basic_recipe({"name": "openai", "model": "m", "api_keys": ["${LOCK_KEY}", SECRET]}),
    )
    result = run_cli("lock", str(recipe), env={"LOCK_KEY": SECRET + "x"})
    assert result.returncode == 0, result.stderr
    text = recipe.with_suffix(".lock").read_text(encoding="utf-8")
    assert SECRET not in text and "LOCK_KEY" not in text


def test_drift_of_a_component_version():
    locked = {
        "llmrun": {"version": "0.0.1"},
        "job_hash": "a",
        "models": ["m"],
        "components": {"data": {"name": "x", "package": "p", "version": "1"}},
        "files": {"gone.txt": "0" * 64},
    }
    current = {
        "llmrun": {"version": "0.0.2"},
        "job_hash": "a",
        "models": ["m"],
        "components": {"data": {"name": "x", "package": "p", "version": "2"}},
        "files": {"new.txt": "1" * 64},
    }
    assert drift(locked, current) == [
        "llmrun version: locked 0.0.1, installed 0.0.2",
        "component data: locked x from p 1, now x from p 2",
        "file gone.txt: locked (sha256 000000000000), now gone",
        "file new.txt: new (sha256 111111111111), not in the lock",
    ]
