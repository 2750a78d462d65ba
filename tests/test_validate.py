"""`llmrun validate`: the real command in a subprocess, on real files; nothing is called."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import basic_recipe, make_records, read_cli, write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]
# An address nothing listens on: validate must never connect to it.
NOWHERE = {"name": "openai", "model": "gpt-test", "base_url": "http://127.0.0.1:9/v1"}


def setup(
    tmp_path: Path,
    rows: list[dict[str, Any]] | None = None,
    provider: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    write_jsonl(tmp_path / "data.jsonl", make_records(5) if rows is None else rows)
    return write_recipe(tmp_path, basic_recipe(provider or NOWHERE, **overrides))


def test_good_recipe_exits_0_with_a_summary(tmp_path: Path):
    recipe = setup(tmp_path)
    result = read_cli("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "ok (loader jsonl, provider openai, 5 record(s) checked)" in result.stderr
    assert "prompt variables: id, text" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()  # validating writes nothing


def test_records_option_limits_how_many_are_checked(tmp_path: Path):
    recipe = setup(tmp_path, make_records(50))
    result = read_cli("validate", str(recipe), "--records", "7")
    assert result.returncode == 0, result.stderr
    assert "7 record(s) checked" in result.stderr
    default = read_cli("validate", str(recipe))
    assert "20 record(s) checked" in default.stderr
    limited = read_cli("validate", str(recipe), "--set", "data.limit=3")
    assert "3 record(s) checked" in limited.stderr


def test_records_must_be_positive(tmp_path: Path):
    result = read_cli("validate", str(setup(tmp_path)), "--records", "0")
    assert result.returncode == 2
    assert "--records" in result.stderr and "internal error" not in result.stderr


def test_validate_from_another_directory_resolves_paths_beside_the_recipe(tmp_path: Path):
    job = tmp_path / "job"
    job.mkdir()
    setup(job)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = read_cli("validate", "../job/recipe.yaml", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "5 record(s) checked" in result.stderr


def test_the_shipped_quickstart_validates():
    result = read_cli("validate", str(REPO / "recipes" / "quickstart.yaml"))
    assert result.returncode == 0, result.stderr
    assert "provider mock" in result.stderr


def test_schema_error_names_file_line_column_key_and_suggestion(tmp_path: Path):
    setup(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n"
        "  path: data.jsonl\n"
        "prompt: '{{ text }}'\n"
        "provider:\n"
        "  name: mock\n"
        "  replys: [a]\n"
        "output:\n"
        "  path: out.jsonl\n",
        encoding="utf-8",
    )
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "RecipeError: 1 problem(s)" in result.stderr
    assert (
        f"{recipe}:6:3: provider.replys: unknown key 'replys' (did you mean 'replies'?)"
        in result.stderr
    )


def test_missing_template_variables_are_listed_with_record_locations(tmp_path: Path):
    rows = [
        {"id": "a", "text": "x", "lang": "en"},
        {"id": "b", "text": "y"},
        {"id": "c", "text": "z", "lang": "fr"},
        {"id": "d"},
    ]
    recipe = setup(tmp_path, rows, prompt="{{ text }} in {{ lang }}")
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "RecipeError: 2 problem(s)" in err
    assert "the prompt uses lang, which 1 of 4 record(s) lack (data.jsonl:2)" in err
    assert "the prompt uses lang, text, which 1 of 4 record(s) lack (data.jsonl:4)" in err
    assert "fields seen: id, lang, text" in err


def test_many_records_lacking_a_variable_are_summarised(tmp_path: Path):
    recipe = setup(tmp_path, make_records(6), prompt="{{ text }} {{ lang }}")
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert (
        "which 6 of 6 record(s) lack (data.jsonl:1, data.jsonl:2, data.jsonl:3 and 3 more)"
        in result.stderr
    )


def test_variables_with_a_default_or_a_guard_are_not_missing(tmp_path: Path):
    recipe = setup(
        tmp_path,
        make_records(3),
        prompt="{{ text }} {{ lang | default('en') }}"
        "{% if note is defined %} {{ note }}{% endif %}",
    )
    result = read_cli("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "3 record(s) checked" in result.stderr


def test_records_without_the_id_field(tmp_path: Path):
    rows = [{"id": "a", "text": "x"}, {"text": "no id"}, {"id": "", "text": "empty id"}]
    result = read_cli("validate", str(setup(tmp_path, rows)))
    assert result.returncode == 2
    assert "data.jsonl:2: data.id: record has no 'id' field" in result.stderr
    assert "data.jsonl:3: data.id: record has no 'id' field" in result.stderr


def test_duplicate_ids_are_reported(tmp_path: Path):
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    result = read_cli("validate", str(setup(tmp_path, rows)))
    assert result.returncode == 2
    assert "data.jsonl:3: data.id: id 'a' is also the id of the record at data.jsonl:1" in (
        result.stderr
    )


def test_malformed_jsonl_lines_are_reported_with_file_and_line(tmp_path: Path):
    setup(tmp_path)
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"id": "a", "text": "x"}) + "\n"
        "\n"
        '{"id": "b", "text": \n'
        "[1, 2]\n" + json.dumps({"id": "c", "text": "z"}) + "\n",
        encoding="utf-8",
    )
    result = read_cli("validate", str(tmp_path / "recipe.yaml"))
    assert result.returncode == 2
    assert "RecipeError: 2 problem(s)" in result.stderr
    assert "data.jsonl:3: data: not valid JSON" in result.stderr
    assert "data.jsonl:4: data: expected a JSON object, got list" in result.stderr


def test_csv_data(tmp_path: Path):
    (tmp_path / "data.csv").write_text('id,text\n1,"two\nlines"\n2,b,extra\n3,c\n', "utf-8")
    recipe = write_recipe(tmp_path, basic_recipe(NOWHERE, data={"path": "data.csv", "id": "id"}))
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "RecipeError: 1 problem(s)" in result.stderr
    assert "data.csv:4: data: 3 cells where the header has 2" in result.stderr


def test_missing_data_file(tmp_path: Path):
    recipe = write_recipe(tmp_path, basic_recipe(NOWHERE))
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "cannot read the data" in result.stderr and "data.jsonl" in result.stderr


def test_unknown_data_encoding_is_a_recipe_error(tmp_path: Path):
    recipe = setup(tmp_path, data={"path": "data.jsonl", "id": "id", "encoding": "utf-9"})
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "data.encoding: unknown encoding 'utf-9'" in result.stderr


def test_empty_data_is_noted_not_an_error(tmp_path: Path):
    result = read_cli("validate", str(setup(tmp_path, [])))
    assert result.returncode == 0
    assert "the data has no records" in result.stderr


def test_missing_environment_variable_is_named(tmp_path: Path):
    recipe = setup(tmp_path, provider={**NOWHERE, "api_keys": ["${LLMRUN_TEST_UNSET_KEY}"]})
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "provider.api_keys[0]: environment variable ${LLMRUN_TEST_UNSET_KEY} is not set" in (
        result.stderr
    )


def test_env_and_dotenv_reach_the_recipe(tmp_path: Path):
    recipe = setup(
        tmp_path, provider={**NOWHERE, "model": "${LLMRUN_TEST_MODEL}"}, env=["LLMRUN_TEST_MODEL"]
    )
    (tmp_path / ".env").write_text("LLMRUN_TEST_MODEL=bad model\n", encoding="utf-8")
    assert read_cli("validate", str(recipe)).returncode == 0
    # The provider's model is free text, so prove which value won through --set's error path:
    result = read_cli(
        "validate",
        str(recipe),
        "--set",
        "provider.base_url=${LLMRUN_TEST_MODEL}",
        env={"LLMRUN_TEST_MODEL": "from-environment"},
    )
    assert result.returncode == 2
    assert "'from-environment' does not match" in result.stderr


def test_secret_never_reaches_stderr_even_when_the_recipe_is_invalid(tmp_path: Path):
    secret = "sk-live-SECRET-0123456789abcdef"
    recipe = setup(
        tmp_path,
        provider={**NOWHERE, "base_url": "${LLMRUN_TEST_KEY}", "api_keys": ["${LLMRUN_TEST_KEY}"]},
        run={"concurrency": 0},
    )
    for env, dotenv in (({"LLMRUN_TEST_KEY": secret}, ""), ({}, f"LLMRUN_TEST_KEY={secret}\n")):
        (tmp_path / ".env").write_text(dotenv, encoding="utf-8")
        result = read_cli("validate", str(recipe), env=env)
        assert result.returncode == 2
        assert "provider.base_url" in result.stderr and "run.concurrency" in result.stderr
        assert secret not in result.stderr + result.stdout


def test_secret_given_with_set_is_not_printed(tmp_path: Path):
    secret = "sk-set-SECRET-0123456789"
    recipe = setup(tmp_path)
    result = read_cli(
        "validate",
        str(recipe),
        "--set",
        f'provider.api_keys="{secret}"',
    )
    assert result.returncode == 2
    assert "provider.api_keys" in result.stderr and "is not of type 'array'" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_set_override_error_is_reported_as_from_set(tmp_path: Path):
    recipe = setup(tmp_path)
    ok = read_cli("validate", str(recipe), "--set", "run.concurrency=3", "--set", "data.limit=2")
    assert ok.returncode == 0, ok.stderr
    bad = read_cli("validate", str(recipe), "--set", "run.concurrency=-1")
    assert bad.returncode == 2
    assert "--set: run.concurrency: -1 is less than the minimum of 1" in bad.stderr


def test_template_syntax_error(tmp_path: Path):
    recipe = setup(tmp_path, prompt={"user": "{% for x in items %}{{ x }}"})
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert f"{recipe}:" in result.stderr and "prompt.user: template syntax error" in result.stderr


def test_render_failure_other_than_missing_fields(tmp_path: Path):
    recipe = setup(tmp_path, make_records(2), prompt="{{ text + 1 }}")
    result = read_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "prompt template failed" in result.stderr
    assert "(2 of 2 record(s): data.jsonl:1, data.jsonl:2)" in result.stderr


def test_postprocessor_options_their_constructors_reject_fail_validate(tmp_path: Path):
    """A regex that does not compile or a python: function that does not import is found by
    validate, not only by the run."""
    write_jsonl(tmp_path / "data.jsonl", make_records(2))
    for post, expected in [
        ({"regex": {"pattern": "(?P<x"}}, "postprocess regex: bad pattern"),
        ({"python": {"function": "no_such_module_here:fn"}}, "no_such_module_here"),
    ]:
        recipe = write_recipe(tmp_path, basic_recipe({"name": "mock"}, postprocess=[post]))
        result = read_cli("validate", str(recipe))
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
