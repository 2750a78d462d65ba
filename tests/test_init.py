"""`llmrun init`: the recipe it writes validates and runs, from flags or from questions."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest
import yaml

from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import llmrun_command, read_cli, read_jsonl, run_cli, write_jsonl


def test_init_defaults_write_a_recipe_and_sample_data_that_run(tmp_path: Path):
    result = run_cli("init", "--no-input", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recipe = tmp_path / "recipe.yaml"
    first = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    schema = Path(first.split("$schema=", 1)[1])
    assert schema.is_file() and schema.name == "recipe.schema.json"  # offline: a local file
    assert len(read_jsonl(tmp_path / "data.jsonl")) == 3
    validate = read_cli("validate", str(recipe))
    assert validate.returncode == 0, validate.stderr
    run = run_cli("run", str(recipe), "--quiet")
    assert run.returncode == 0, run.stderr
    rows = read_jsonl(tmp_path / "out" / "recipe.jsonl")
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert "The battery lasts two days" in rows[0]["text"]  # the prompt used the sample record


def test_init_from_flags_against_a_local_server(tmp_path: Path, fake_openai: FakeOpenAI):
    write_jsonl(tmp_path / "items.jsonl", [{"sku": "a", "title": "A"}, {"sku": "b", "title": "B"}])
    result = run_cli(
        "init",
        "jobs/label.yaml",
        "--no-input",
        "--data",
        "../items.jsonl",
        "--id",
        "sku",
        "--preset",
        "vllm",
        "--base-url",
        fake_openai.url,
        "--model",
        "local-model",
        "--system",
        "You name things.\nBriefly.",
        "--prompt",
        "Name: {{ title }}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    recipe = tmp_path / "jobs" / "label.yaml"
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    assert data["name"] == "label"
    assert data["data"] == {"path": "../items.jsonl", "id": "sku"}
    assert data["prompt"] == {"system": "You name things.\nBriefly.", "user": "Name: {{ title }}"}
    assert data["provider"] == {
        "name": "openai",
        "model": "local-model",
        "base_url": fake_openai.url,
    }
    assert not (tmp_path / "jobs" / "data.jsonl").exists()  # data was given
    # The data sits outside the recipe's folder: the user allows that folder to be read.
    refused = run_cli("run", str(recipe), "--quiet")
    assert refused.returncode == 2 and "--allow-read" in refused.stderr
    run = run_cli("run", str(recipe), "--quiet", "--allow-read", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert fake_openai.count() == 2
    assert {r["id"] for r in read_jsonl(tmp_path / "jobs" / "out" / "label.jsonl")} == {"a", "b"}


def test_init_openai_preset_reads_the_key_from_the_environment(tmp_path: Path):
    result = run_cli("init", "--no-input", "--preset", "openai", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "recipe.yaml").read_text(encoding="utf-8")
    assert 'api_keys: ["${OPENAI_API_KEY}"]' in text
    assert yaml.safe_load(text)["provider"]["model"] == "gpt-4o-mini"
    missing = read_cli("validate", "recipe.yaml", cwd=tmp_path, env={"OPENAI_API_KEY": ""})
    assert missing.returncode == 0, missing.stderr


def test_init_never_overwrites_without_force(tmp_path: Path):
    (tmp_path / "recipe.yaml").write_text("mine\n", encoding="utf-8")
    result = run_cli("init", "--no-input", cwd=tmp_path)
    assert result.returncode == 2
    assert "recipe.yaml exists" in result.stderr
    assert (tmp_path / "recipe.yaml").read_text(encoding="utf-8") == "mine\n"
    forced = run_cli("init", "--no-input", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr


def test_init_asks_questions_on_a_terminal(tmp_path: Path):
    pty = pytest.importorskip("pty")  # POSIX terminals only
    answers = ["", "mock", "", "Say hi to {{ text }}"]  # sample data, preset, model, prompt
    pid, fd = pty.fork()
    if pid == 0:  # the child: llmrun with a terminal for stdin and stdout
        os.chdir(tmp_path)
        os.execv(llmrun_command()[0], [*llmrun_command(), "init"])
    output = b""
    try:
        for answer in answers:
            output += _read_until(fd, b": ")
            os.write(fd, answer.encode() + b"\n")
        while True:
            chunk = _read_some(fd)
            if not chunk:
                break
            output += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert b"provider preset" in output
    data = yaml.safe_load((tmp_path / "recipe.yaml").read_text(encoding="utf-8"))
    assert data["prompt"]["user"] == "Say hi to {{ text }}"
    assert data["provider"]["name"] == "mock"
    check = subprocess.run(
        [*llmrun_command(), "validate", "recipe.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def _read_some(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 30)
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:  # the child closed the terminal
        return b""


def _read_until(fd: int, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = _read_some(fd)
        assert chunk, f"no prompt {marker!r} in {got!r}"
        got += chunk
    return got
