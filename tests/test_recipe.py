"""Recipe loading in process: real YAML files in tmp_path, the real registry of built-ins.

Positions are asserted exactly (file:line:column of the key at fault), so the recipes here are
written as literal YAML text, not dumped from dicts.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from llmrun.errors import Problem, RecipeError
from llmrun.plugins import Registry, load_registry
from llmrun.recipe.load import PROMPT_REQUIRED, load_recipe
from llmrun.recipe.model import Recipe

from .conftest import basic_recipe, write_recipe

GOOD = """\
name: t
data:
  path: data.jsonl
  id: id
prompt:
  system: You are terse.
  user: "{{ text }}"
provider:
  name: mock
output:
  path: out.jsonl
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(
    path: Path,
    registry: Registry,
    *overrides: str,
    environ: Mapping[str, str] | None = None,
) -> Recipe:
    return load_recipe(path, registry, overrides=overrides, environ=environ or {})


def problems_of(path: Path, registry: Registry, *overrides: str, **kw: object) -> list[Problem]:
    with pytest.raises(RecipeError) as info:
        load(path, registry, *overrides, **kw)  # type: ignore[arg-type]
    assert info.value.problems, "a RecipeError always lists its problems"
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# -- a good recipe ---------------------------------------------------------------------------


def test_good_recipe_loads_with_defaults_and_absolute_paths(tmp_path: Path, registry: Registry):
    recipe = load(write(tmp_path, GOOD), registry)
    assert recipe.name == "t"
    assert recipe.data.name == "jsonl"  # inferred from the .jsonl extension
    assert recipe.data.options == {"path": "data.jsonl"}
    assert recipe.id_field == "id"
    assert recipe.messages == (("system", "You are terse."), ("user", "{{ text }}"))
    assert recipe.provider.name == "mock"
    assert recipe.writer.name == "jsonl"
    assert recipe.output_path == tmp_path.resolve() / "out.jsonl"
    assert recipe.run.concurrency == 16 and recipe.run.max_retries == 5
    assert recipe.postprocess == ()
    assert recipe.path == (tmp_path / "recipe.yaml").resolve()


def test_adaptive_is_on_without_limits_and_its_slow_start_everywhere_only_when_written(
    tmp_path: Path, registry: Registry
):
    path = write(tmp_path, GOOD)
    default = load(path, registry).run
    assert default.adaptive and not default.slow_start_local
    written = load(path, registry, "run.adaptive=true").run
    assert written.adaptive and written.slow_start_local
    limited = load(path, registry, "run.requests_per_minute=600").run
    assert not limited.adaptive
    off = load(path, registry, "run.adaptive=false").run
    assert not off.adaptive and not off.slow_start_local


def test_paths_are_relative_to_the_recipe_not_the_working_directory(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    sub = tmp_path / "jobs" / "a"
    sub.mkdir(parents=True)
    path = write(sub, GOOD.replace("out.jsonl", "results/out.jsonl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load(Path(os.path.relpath(path, elsewhere)), registry)
    assert recipe.output_path == (sub / "results" / "out.jsonl").resolve()
    assert recipe.base_dir == sub.resolve()


def test_name_defaults_to_the_file_name(tmp_path: Path, registry: Registry):
    recipe = load(write(tmp_path, GOOD.replace("name: t\n", ""), "sentiment.yaml"), registry)
    assert recipe.name == "sentiment"


@pytest.mark.parametrize(
    ("path", "loader"),
    [("d.jsonl", "jsonl"), ("d.NDJSON", "jsonl"), ("d.csv", "csv"), ("d.tsv", "csv")],
)
def test_loader_inferred_from_extension(tmp_path: Path, registry: Registry, path, loader):
    recipe = load(write(tmp_path, GOOD.replace("data.jsonl", path)), registry)
    assert recipe.data.name == loader


def test_loader_not_inferable_from_extension(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD.replace("data.jsonl", "data.xml")), registry))
    assert (p.line, p.column, p.path) == (2, 1, "data")
    assert "none implied by the path's extension" in p.message and "loader:" in p.message


def test_data_without_path_or_loader(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD.replace("  path: data.jsonl\n", "")), registry))
    assert p.path == "data" and "path:" in p.message and "loader:" in p.message


# -- schema errors: where, and what to write instead -----------------------------------------


def test_unknown_top_level_key_suggests_the_nearest(tmp_path: Path, registry: Registry):
    path = write(tmp_path, GOOD + "generaton:\n  temperature: 0\n")
    p = only(problems_of(path, registry))
    assert p.file == str(path.resolve())
    assert (p.line, p.column) == (12, 1)
    assert p.path == "generaton"
    assert "unknown key 'generaton'" in p.message and "did you mean 'generation'?" in p.message
    assert str(p).startswith(f"{path.resolve()}:12:1: generaton: ")


def test_unknown_nested_key_suggests_the_nearest(tmp_path: Path, registry: Registry):
    path = write(tmp_path, GOOD + "run:\n  concurency: 4\n")
    p = only(problems_of(path, registry))
    assert (p.line, p.column, p.path) == (13, 3, "run.concurency")
    assert "did you mean 'concurrency'?" in p.message


def test_unknown_key_without_a_close_match_lists_the_allowed(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "run:\n  zzz: 4\n"), registry))
    assert "allowed:" in p.message and "concurrency" in p.message


def test_wrong_type(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "run:\n  max_retries: lots\n"), registry))
    assert (p.line, p.column, p.path) == (13, 3, "run.max_retries")
    assert "'lots' is not of type 'integer'" in p.message


def test_value_out_of_range(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "generation:\n  temperature: 3\n"), registry))
    assert (p.line, p.path) == (13, "generation.temperature")
    assert "maximum of 2" in p.message


def test_unknown_provider_suggests_the_nearest_and_lists_all(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD.replace("name: mock", "name: opnai")), registry))
    assert (p.line, p.column, p.path) == (9, 3, "provider.name")
    assert "unknown provider 'opnai'" in p.message
    assert "did you mean 'openai'?" in p.message
    available = p.message.split("available: ", 1)[1].split(", ")
    assert {"mock", "openai"} <= set(available) and available == sorted(available)


def test_unknown_loader(tmp_path: Path, registry: Registry):
    path = write(tmp_path, GOOD.replace("  id: id\n", "  id: id\n  loader: jsnl\n"))
    p = only(problems_of(path, registry))
    assert (p.line, p.path) == (5, "data.loader")
    assert "unknown loader 'jsnl' (did you mean 'jsonl'?)" in p.message


def test_unknown_writer(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "  writer: jsnol\n"), registry))
    assert (p.line, p.path) == (12, "output.writer")
    assert "unknown writer 'jsnol' (did you mean 'jsonl'?)" in p.message


@pytest.mark.parametrize(
    ("item", "column"), [("- strp", 5), ("- strp: {chars: x}", 5)], ids=["name", "mapping"]
)
def test_unknown_postprocessor(tmp_path: Path, registry: Registry, item: str, column: int):
    p = only(problems_of(write(tmp_path, GOOD + f"postprocess:\n  - strip\n  {item}\n"), registry))
    assert (p.line, p.column, p.path) == (14, column, "postprocess[1]")
    assert "unknown postprocessor 'strp' (did you mean 'strip'?)" in p.message


def test_component_option_typo_points_at_the_option(tmp_path: Path, registry: Registry):
    text = GOOD.replace("  name: mock\n", "  name: openai\n  modle: gpt-4o-mini\n")
    problems = problems_of(write(tmp_path, text), registry)
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {"provider.modle", "provider"}
    typo = by_path["provider.modle"]
    assert (typo.line, typo.column) == (10, 3)
    assert "unknown key 'modle' (did you mean 'model'?)" in typo.message
    assert "'model' is required" in by_path["provider"].message


def test_component_option_wrong_value(tmp_path: Path, registry: Registry):
    text = GOOD.replace("  name: mock\n", "  name: mock\n  latency_s: -1\n")
    p = only(problems_of(write(tmp_path, text), registry))
    assert (p.line, p.path) == (10, "provider.latency_s") and "minimum of 0" in p.message


def test_postprocessor_options(tmp_path: Path, registry: Registry):
    text = GOOD + "postprocess:\n  - strip: {chars: 1}\n  - strip: [x]\n  - strip:\n"
    problems = problems_of(write(tmp_path, text), registry)
    assert [(p.line, p.path) for p in problems] == [
        (13, "postprocess[0].strip.chars"),
        (14, "postprocess[1].strip"),
    ]
    assert "1 is not of type 'string'" in problems[0].message
    assert "options must be a mapping" in problems[1].message


def test_duplicate_key_is_refused_with_its_line(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "provider:\n  name: openai\n"), registry))
    assert (p.line, p.column, p.path) == (12, 1, "provider")
    assert "duplicate key 'provider'" in p.message


def test_duplicate_nested_key(tmp_path: Path, registry: Registry):
    p = only(
        problems_of(write(tmp_path, GOOD.replace("  id: id\n", "  id: id\n  id: x\n")), registry)
    )
    assert (p.line, p.column, p.path) == (5, 3, "data.id")


def test_merge_keys_may_be_overridden_but_plain_duplicates_may_not(
    tmp_path: Path, registry: Registry
):
    text = GOOD + (
        "generation: &gen {temperature: 0.5, max_tokens: 8}\n"
        "run:\n"
        "  <<: {concurrency: 4, max_retries: 1}\n"
        "  concurrency: 9\n"
        "description: x\n"
    )
    recipe = load(write(tmp_path, text), registry)
    assert (recipe.run.concurrency, recipe.run.max_retries) == (9, 1)
    assert recipe.generation == {"temperature": 0.5, "max_tokens": 8}
    text += "postprocess:\n  - strip: {<<: {chars: x}, chars: y, chars: z}\n"
    p = only(problems_of(write(tmp_path, text), registry))
    assert (p.line, p.path) == (18, "postprocess[0].strip.chars")
    assert "duplicate key 'chars'" in p.message


def test_invalid_yaml_reports_its_line(tmp_path: Path, registry: Registry):
    text = GOOD.replace('  user: "{{ text }}"', "  user: [unclosed\n  other: x")
    p = only(problems_of(write(tmp_path, text), registry))
    assert p.message.startswith("invalid YAML")
    assert p.line == 8 and p.column is not None


def test_bad_indentation_is_invalid_yaml(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, "data:\n  path: a.jsonl\n   id: x\n"), registry))
    assert p.message.startswith("invalid YAML") and p.line == 3


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "# only a comment\n"])
def test_document_must_be_a_mapping(tmp_path: Path, registry: Registry, text: str):
    p = only(problems_of(write(tmp_path, text), registry))
    assert "a recipe is a YAML mapping" in p.message and p.line == 1


def test_two_documents_are_refused(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD + "---\nname: other\n"), registry))
    assert "invalid YAML" in p.message and p.line == 12


def test_missing_required_sections_are_all_named(tmp_path: Path, registry: Registry):
    problems = problems_of(write(tmp_path, "name: x\n"), registry)
    assert sorted(p.message for p in problems) == sorted(
        [f"'{key}' is required" for key in ["data", "provider", "output"]] + [PROMPT_REQUIRED]
    )


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path, registry: Registry):
    text = """\
    name: t
    data: {path: data.jsonl, limt: 3}
    promt: x
    prompt: "{{ text }}"
    provider: {name: mokc}
    run: {concurrency: 0}
    postprocess: [strp]
    output: {path: out.jsonl, include: some}
    """
    problems = problems_of(write(tmp_path, text), registry)
    assert [(p.line, p.path) for p in problems] == [
        (2, "data.limt"),
        (3, "promt"),
        (5, "provider.name"),
        (6, "run.concurrency"),
        (7, "postprocess[0]"),
        (8, "output.include"),
    ]
    assert "did you mean 'limit'?" in problems[0].message
    assert "'some' is not one of ['all', 'none']" in problems[5].message


def test_unreadable_recipe(tmp_path: Path, registry: Registry):
    p = only(problems_of(tmp_path / "nope.yaml", registry))
    assert "cannot read recipe" in p.message and p.file.endswith("nope.yaml")


def test_recipe_that_is_not_utf8(tmp_path: Path, registry: Registry):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("You are terse.", "Réponds.").encode("latin-1"))
    p = only(problems_of(path, registry))
    assert "not UTF-8" in p.message


# -- prompt forms ------------------------------------------------------------------------------


def test_prompt_as_a_string_is_the_user_message(tmp_path: Path, registry: Registry):
    text = GOOD.replace('  system: You are terse.\n  user: "{{ text }}"\n', "").replace(
        "prompt:\n", 'prompt: "Say {{ text }}"\n'
    )
    assert load(write(tmp_path, text), registry).messages == (("user", "Say {{ text }}"),)


def test_prompt_as_messages(tmp_path: Path, registry: Registry):
    text = GOOD.replace(
        '  system: You are terse.\n  user: "{{ text }}"\n',
        "  messages:\n"
        "    - {role: system, content: Be brief.}\n"
        "    - {role: user, content: 'Example'}\n"
        "    - {role: assistant, content: 'Answer'}\n"
        "    - {role: user, content: '{{ text }}'}\n",
    )
    recipe = load(write(tmp_path, text), registry)
    assert [role for role, _ in recipe.messages] == ["system", "user", "assistant", "user"]
    assert recipe.messages[-1] == ("user", "{{ text }}")


def test_prompt_key_typo_is_named_not_a_vague_one_of_error(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD.replace("  system:", "  sytem:")), registry))
    assert (p.line, p.column, p.path) == (6, 3, "prompt.sytem")
    assert "unknown key 'sytem' (did you mean 'system'?)" in p.message


def test_prompt_message_role_must_be_known(tmp_path: Path, registry: Registry):
    text = GOOD.replace(
        '  system: You are terse.\n  user: "{{ text }}"\n',
        "  messages:\n    - {role: robot, content: hi}\n",
    )
    p = only(problems_of(write(tmp_path, text), registry))
    assert p.path == "prompt.messages[0].role" and p.line == 7
    assert "'robot' is not one of" in p.message


def test_prompt_of_the_wrong_type(tmp_path: Path, registry: Registry):
    text = GOOD.replace('  system: You are terse.\n  user: "{{ text }}"\n', "").replace(
        "prompt:\n", "prompt: 42\n"
    )
    p = only(problems_of(write(tmp_path, text), registry))
    assert p.path == "prompt" and "42 is not of type 'string' or 'object'" in p.message


def test_empty_prompt_mapping(tmp_path: Path, registry: Registry):
    text = GOOD.replace('  system: You are terse.\n  user: "{{ text }}"\n', "").replace(
        "prompt:\n", "prompt: {}\n"
    )
    assert only(problems_of(write(tmp_path, text), registry)).path == "prompt"


def test_template_syntax_error_is_a_recipe_error_with_its_place(tmp_path: Path, registry: Registry):
    text = GOOD.replace('user: "{{ text }}"', 'user: "{{ text "') + "run: {concurrency: 0}\n"
    problems = problems_of(write(tmp_path, text), registry)
    assert [(p.line, p.column, p.path) for p in problems] == [
        (7, 3, "prompt.user"),
        (12, 7, "run.concurrency"),
    ]
    assert "template syntax error (template line 1)" in problems[0].message


def test_template_with_unknown_filter_is_a_recipe_error(tmp_path: Path, registry: Registry):
    text = GOOD.replace('user: "{{ text }}"', 'user: "{{ text | shout }}"')
    p = only(problems_of(write(tmp_path, text), registry))
    assert p.path == "prompt.user" and "No filter named 'shout'" in p.message


# -- ${VAR} --------------------------------------------------------------------------------------

VARS = """\
env: [JOB_NAME, DATA_FILE, MODEL]  # read outside the provider's secret places: declared
name: "${JOB_NAME:-default-name}"
description: "literal $${NOT_A_VAR} stays"
data:
  path: "${DATA_FILE}"
prompt: "{{ text }}"
provider:
  name: mock
  model: "${MODEL}"
output:
  path: out.jsonl
"""


def test_variables_from_the_environment(tmp_path: Path, registry: Registry):
    recipe = load(
        write(tmp_path, VARS), registry, environ={"DATA_FILE": "d.jsonl", "MODEL": "m-env"}
    )
    assert recipe.name == "default-name"
    assert recipe.data.options["path"] == "d.jsonl"
    assert recipe.provider.options["model"] == "m-env"


def test_variables_from_dotenv_beside_the_recipe_and_the_environment_wins(
    tmp_path: Path, registry: Registry
):
    (tmp_path / ".env").write_text(
        "# comment\n"
        "export DATA_FILE=from-dotenv.jsonl\n"
        'MODEL="m-dotenv"  # trailing comment\n'
        "JOB_NAME=\n",
        encoding="utf-8",
    )
    path = write(tmp_path, VARS)
    recipe = load(path, registry)
    assert recipe.data.options["path"] == "from-dotenv.jsonl"
    assert recipe.provider.options["model"] == "m-dotenv"
    assert recipe.name == "default-name"  # empty counts as unset for ${VAR:-default}
    recipe = load(path, registry, environ={"MODEL": "m-env", "JOB_NAME": "env-name"})
    assert recipe.provider.options["model"] == "m-env"
    assert recipe.name == "env-name"
    assert recipe.data.options["path"] == "from-dotenv.jsonl"


def test_dotenv_is_read_beside_the_recipe_not_in_the_working_directory(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / ".env").write_text("DATA_FILE=cwd.jsonl\nMODEL=m\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    path = write(sub, VARS)
    monkeypatch.chdir(tmp_path)
    problems = problems_of(path, registry)
    assert {p.path for p in problems} == {"data.path", "provider.model"}


def test_dotenv_written_with_a_byte_order_mark(tmp_path: Path, registry: Registry):
    (tmp_path / ".env").write_text("DATA_FILE=d.jsonl\nMODEL=m\n", encoding="utf-8-sig")
    recipe = load(write(tmp_path, VARS), registry)
    assert recipe.data.options["path"] == "d.jsonl"


def test_dollar_dollar_is_a_literal(tmp_path: Path, registry: Registry):
    path = write(tmp_path, VARS.replace('name: "${JOB_NAME:-default-name}"', 'name: "$${JOB}"'))
    recipe = load(path, registry, environ={"DATA_FILE": "d.jsonl", "MODEL": "m", "JOB": "x"})
    assert recipe.name == "${JOB}"


def test_missing_variables_are_each_named_with_their_line(tmp_path: Path, registry: Registry):
    path = write(tmp_path, VARS)
    problems = problems_of(path, registry)
    assert [(p.line, p.column, p.path) for p in problems] == [
        (5, 3, "data.path"),
        (9, 3, "provider.model"),
    ]
    assert "${DATA_FILE} is not set" in problems[0].message
    assert "${MODEL} is not set" in problems[1].message
    assert str(tmp_path / ".env") in problems[0].message  # says where it could go


def test_interpolated_api_key_is_a_secret_and_never_in_error_text(
    tmp_path: Path, registry: Registry
):
    secret = "sk-test-ABCDEF0123456789"
    text = """\
    data: {path: data.jsonl}
    prompt: "{{ text }}"
    provider:
      name: openai
      model: m
      base_url: "${KEY}"
      api_keys: ["${KEY}"]
    output: {path: out.jsonl}
    """
    with pytest.raises(RecipeError) as info:
        load(write(tmp_path, text), registry, environ={"KEY": secret})
    (p,) = info.value.problems
    assert p.path == "provider.base_url" and "does not match" in p.message
    assert secret not in str(info.value)
    assert "key#" in p.message  # replaced by a fingerprint, so the reader knows which value

    recipe = load(
        write(tmp_path, text.replace('base_url: "${KEY}"', "base_url: http://x")),
        registry,
        environ={"KEY": secret},
    )
    assert recipe.api_keys == (secret,) and secret in recipe.secrets


def test_api_keys_of_the_wrong_shape_are_redacted(tmp_path: Path, registry: Registry):
    secret = "sk-shape-0123456789"
    text = GOOD.replace("  name: mock\n", '  name: mock\n  api_keys: "${K}"\n')
    with pytest.raises(RecipeError) as info:
        load(write(tmp_path, text), registry, environ={"K": secret})
    assert "is not of type 'array'" in str(info.value) and secret not in str(info.value)


def test_literal_api_key_is_a_secret_too(tmp_path: Path, registry: Registry):
    secret = "sk-literal-0123456789"
    text = f"""\
    data: {{path: data.jsonl}}
    prompt: "{{{{ text }}}}"
    provider: {{name: openai, model: m, base_url: "{secret}", api_keys: ["{secret}"]}}
    output: {{path: out.jsonl}}
    """
    with pytest.raises(RecipeError) as info:
        load(write(tmp_path, text), registry)
    assert "does not match" in str(info.value) and secret not in str(info.value)


def test_secret_in_an_authorization_header(tmp_path: Path, registry: Registry):
    secret = "tok-0123456789abcdef"
    text = GOOD.replace(
        "  name: mock\n",
        '  name: openai\n  model: m\n  base_url: "${T}"\n  headers: {Authorization: "${T}"}\n',
    )
    with pytest.raises(RecipeError) as info:
        load(write(tmp_path, text), registry, environ={"T": secret})
    assert "does not match" in str(info.value) and secret not in str(info.value)


# -- --set -----------------------------------------------------------------------------------


def test_set_values_are_read_as_yaml(tmp_path: Path, registry: Registry):
    recipe = load(
        write(tmp_path, GOOD),
        registry,
        "run.concurrency=4",
        "run.timeout_s=2.5",
        "generation.stop=[END, '\\n']",
        "output.raw=true",
        "name=  spaced  ",
        "data.limit=7",
    )
    assert recipe.run.concurrency == 4 and recipe.run.timeout_s == 2.5
    assert recipe.generation["stop"] == ("END", "\\n")
    assert recipe.keep_raw is True
    assert recipe.name == "spaced"
    assert recipe.limit == 7


def test_set_replaces_a_whole_section(tmp_path: Path, registry: Registry):
    recipe = load(
        write(tmp_path, GOOD),
        registry,
        "provider={name: openai, model: gpt-x, base_url: 'http://127.0.0.1:9/v1'}",
        "postprocess=[strip, {strip: {chars: '.'}}]",
    )
    assert recipe.provider.name == "openai"
    assert recipe.provider.options["model"] == "gpt-x"
    assert [(p.name, dict(p.options)) for p in recipe.postprocess] == [
        ("strip", {}),
        ("strip", {"chars": "."}),
    ]


def test_set_creates_missing_sections(tmp_path: Path, registry: Registry):
    recipe = load(write(tmp_path, GOOD), registry, "generation.temperature=0.5")
    assert recipe.generation == {"temperature": 0.5}


def test_set_that_makes_the_recipe_invalid_is_reported_as_from_set(
    tmp_path: Path, registry: Registry
):
    problems = problems_of(
        write(tmp_path, GOOD + "run:\n  concurrency: 0\n"),
        registry,
        "provider.modle=x",
        "generation.temprature=1",
        "bogus.deep.key=1",
    )
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {"run.concurrency", "provider.modle", "generation.temprature", "bogus"}
    assert by_path["run.concurrency"].line == 13  # from the file
    for key in ("provider.modle", "generation.temprature", "bogus"):
        assert by_path[key].file == "--set" and by_path[key].line is None, by_path[key]
        assert str(by_path[key]).startswith("--set: ")
    assert "did you mean 'temperature'?" in by_path["generation.temprature"].message


def test_set_of_a_variable_is_interpolated(tmp_path: Path, registry: Registry):
    recipe = load(write(tmp_path, GOOD), registry, "provider.model=${M}", environ={"M": "from-env"})
    assert recipe.provider.options["model"] == "from-env"


@pytest.mark.parametrize("bad", ["run.concurrency", "=3", "run..concurrency=3", ".x=1"])
def test_malformed_set(tmp_path: Path, registry: Registry, bad: str):
    p = only(problems_of(write(tmp_path, GOOD), registry, bad))
    assert p.file == "--set" and "expects key.path=value" in p.message


def test_set_below_a_value_that_is_not_a_mapping(tmp_path: Path, registry: Registry):
    p = only(problems_of(write(tmp_path, GOOD), registry, "name.first=x"))
    assert p.file == "--set" and "name is not a mapping" in p.message


# -- job_hash ----------------------------------------------------------------------------------


def hash_of(tmp_path: Path, registry: Registry, **overrides: object) -> str:
    provider = {"name": "openai", "model": "gpt-a", "api_keys": ["${KEY}"]}
    recipe = basic_recipe(provider, **overrides)
    path = write_recipe(tmp_path, recipe)
    return load(path, registry, environ={"KEY": "sk-one-123456"}).job_hash


def test_job_hash_ignores_run_settings_keys_output_and_limit(tmp_path: Path, registry: Registry):
    base = hash_of(tmp_path, registry)
    path = write_recipe(
        tmp_path,
        basic_recipe({"name": "openai", "model": "gpt-a", "api_keys": ["${KEY}", "${KEY2}"]}),
    )
    rotated = load(
        path,
        registry,
        "run.concurrency=3",
        "run.max_retries=0",
        "run.requests_per_minute=10",
        "data.limit=5",
        "output.path=elsewhere.jsonl",
        environ={"KEY": "sk-two-999999", "KEY2": "sk-three-77777"},
    )
    assert rotated.job_hash == base
    assert len(base) == 16


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": {"system": "You are verbose.", "user": "id={{ id }} {{ text }}"}},
        {"generation": {"temperature": 0.7}},
        {"postprocess": ["strip"]},
        {"data": {"path": "data.jsonl", "id": "text"}},
    ],
    ids=["prompt", "generation", "postprocess", "data-id"],
)
def test_job_hash_changes_with_what_decides_results(tmp_path: Path, registry: Registry, change):
    assert hash_of(tmp_path, registry, **change) != hash_of(tmp_path, registry)


def test_job_hash_changes_with_the_model(tmp_path: Path, registry: Registry):
    provider = {"name": "openai", "model": "gpt-a", "api_keys": ["k"]}
    path = write_recipe(tmp_path, basic_recipe(provider))
    a = load(path, registry).job_hash
    b = load(path, registry, "provider.model=gpt-b").job_hash
    assert a != b
    assert load(path, registry).job_hash == a  # and it is stable
