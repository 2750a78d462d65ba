"""The built-in postprocessors, built through the registry as a recipe builds them, and a chain
run end to end through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.errors import PostprocessError, RecipeError
from llmrun.plugins import load_registry
from llmrun.recipe.model import freeze
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext, Reply, Result

from .conftest import basic_recipe, read_jsonl, run_cli, write_jsonl, write_recipe

REGISTRY = load_registry(entry_points=False)


def make(name: str, tmp_path: Path | None = None, **options: Any) -> Any:
    cls = REGISTRY.get("postprocessor", name).cls
    context = ComponentContext(tmp_path or Path.cwd(), "test")
    return cls(freeze(options), context)


def result(text: str | None, **fields: Any) -> Result:
    return Result(text, dict(fields), Reply(text), {"id": "r1"})


def apply(post: Any, text: str | None, **fields: Any) -> Result:
    res = result(text, **fields)
    post(res)
    return res


# -- drop_think ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm, maybe</think>\npositive", "positive"),
        ("<think>a</think>yes <think>b\nc</think> no", "yes  no"),
        ("the opening tag was cut off</think>  answer", "answer"),
        ("<think>ran out while thinking about", ""),
        ("answer <think>then more thinking", "answer"),
        ("no thinking at all", "no thinking at all"),
    ],
)
def test_drop_think(text: str, expected: str) -> None:
    assert apply(make("drop_think"), text).text == expected


def test_drop_think_other_tag() -> None:
    assert apply(make("drop_think", tag="reasoning"), "<reasoning>x</reasoning>ok").text == "ok"


# -- extract_json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"label": "a", "n": 2}',
        'Here you go:\n```json\n{"label": "a", "n": 2}\n```\nAnything else?',
        'Sure! {"label": "a", "n": 2} is the answer {"not": "this one"}',
    ],
)
def test_extract_json_finds_the_object(text: str) -> None:
    assert apply(make("extract_json"), text).fields == {"label": "a", "n": 2}


def test_extract_json_target_keeps_any_value() -> None:
    assert apply(make("extract_json", target="items"), "list: [1, 2, 3]").fields == {
        "items": [1, 2, 3]
    }


def test_extract_json_errors() -> None:
    with pytest.raises(PostprocessError, match="no JSON found") as info:
        apply(make("extract_json"), "I cannot do that")
    assert info.value.feedback
    with pytest.raises(PostprocessError, match="not an object"):
        apply(make("extract_json"), "[1, 2]")


# -- json_schema --------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
}


def test_json_schema_parses_and_validates() -> None:
    post = make("json_schema", schema=PERSON)
    assert apply(post, '```json\n{"name": "Ann", "age": 3}\n```').fields == {
        "name": "Ann",
        "age": 3,
    }
    with pytest.raises(PostprocessError, match="age: -1 is less than the minimum of 0") as info:
        apply(post, '{"name": "Ann", "age": -1}')
    assert "age" in (info.value.feedback or "")
    with pytest.raises(PostprocessError, match="'age' is a required property"):
        apply(post, '{"name": "Ann"}')


def test_json_schema_checks_fields_an_earlier_step_made(tmp_path: Path) -> None:
    (tmp_path / "person.yaml").write_text(json.dumps(PERSON), encoding="utf-8")
    post = make("json_schema", tmp_path, schema_file="person.yaml", reask=2)
    assert post.reask == 2
    res = result("not json at all", name="Ann", age=4)
    post(res)  # validates the fields; the text is not read
    with pytest.raises(PostprocessError, match="required"):
        post(result("whatever", name="Ann"))


def test_json_schema_bad_schema_or_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="invalid schema"):
        make("json_schema", schema={"type": "nonsense"})
    with pytest.raises(RecipeError, match="cannot read the schema file"):
        make("json_schema", tmp_path, schema_file="missing.json")


# -- regex --------------------------------------------------------------------------------


def test_regex_named_groups_become_fields() -> None:
    post = make("regex", pattern=r"score:\s*(?P<score>\d+)/(?P<of>\d+)", ignore_case=True)
    assert apply(post, "Overall SCORE: 7/10, good").fields == {"score": "7", "of": "10"}
    with pytest.raises(PostprocessError, match="does not match"):
        apply(post, "no score here")
    skip = make("regex", pattern=r"(?P<x>\d+)", on_no_match="skip", text="x")
    assert apply(skip, "none").fields == {}
    assert apply(skip, "take 42 now").text == "42"


def test_regex_bad_pattern_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="bad pattern"):
        make("regex", pattern="(unclosed")


# -- choices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Positive", "positive"),
        ("  NEGATIVE.\n", "negative"),
        ("pos", "positive"),
        ("I would say this review is neutral overall.", "neutral"),
        ('"Mixed"', "neutral"),
    ],
)
def test_choices_maps_to_a_label(text: str, label: str) -> None:
    post = make(
        "choices",
        labels=["positive", "negative", "neutral"],
        aliases={"pos": "positive", "mixed": "neutral"},
    )
    res = apply(post, text)
    assert res.fields == {"label": label} and res.text == label


@pytest.mark.parametrize("text", ["great", "positive or negative", ""])
def test_choices_error_when_none_or_several_match(text: str) -> None:
    post = make("choices", labels=["positive", "negative"], field="sentiment")
    with pytest.raises(PostprocessError, match="none of the labels") as info:
        apply(post, text)
    assert info.value.feedback == "Answer with exactly one of: positive, negative."


def test_choices_alias_to_unknown_label_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="not one of the labels"):
        make("choices", labels=["a"], aliases={"x": "b"})


# -- python -------------------------------------------------------------------------------


def test_python_function_beside_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "pp_helpers_t1.py").write_text(
        "def words(result):\n"
        "    if not result.text:\n"
        "        raise ValueError('empty reply')\n"
        "    return {'words': len(result.text.split())}\n"
        "def upper(result):\n"
        "    return result.text.upper()\n",
        encoding="utf-8",
    )
    assert apply(make("python", tmp_path, function="pp_helpers_t1:words"), "a b c").fields == {
        "words": 3
    }
    assert apply(make("python", tmp_path, function="pp_helpers_t1:upper"), "hi").text == "HI"
    with pytest.raises(PostprocessError, match="empty reply"):
        apply(make("python", tmp_path, function="pp_helpers_t1:words"), "")
    with pytest.raises(RecipeError, match="cannot load 'pp_helpers_t1:nope'"):
        make("python", tmp_path, function="pp_helpers_t1:nope")


# -- fields -------------------------------------------------------------------------------


def test_fields_keep_rename_drop_text() -> None:
    assert apply(make("fields", keep=["a"]), "t", a=1, b=2).fields == {"a": 1}
    assert apply(make("fields", keep={"x": "a"}), "t", a=1, b=2).fields == {"x": 1}
    assert apply(make("fields", drop=["b"], text="answer"), "t", a=1, b=2).fields == {
        "a": 1,
        "answer": "t",
    }
    with pytest.raises(PostprocessError, match="no field 'c'"):
        apply(make("fields", keep=["c"]), "t", a=1)
    assert apply(make("fields", keep=["c"], missing="null"), "t", a=1).fields == {"c": None}


# -- end to end ---------------------------------------------------------------------------


def test_chain_end_to_end_and_errors_keep_the_reply(tmp_path: Path) -> None:
    replies = {
        "r1": '<think>looks good</think>\n```json\n{"label": "Positive", "score": 9}\n```',
        "r2": "<think>hmm</think> I refuse.",
        "r3": '{"label": "angry", "score": 2}',
    }

    def reply(body: Any) -> str:
        return replies[body["messages"][-1]["content"].split()[0].removeprefix("id=")]

    with FakeOpenAI(reply=reply) as server:
        write_jsonl(tmp_path / "data.jsonl", [{"id": i, "text": "x"} for i in replies])
        provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
        recipe = basic_recipe(
            provider,
            postprocess=[
                "drop_think",
                "extract_json",
                {"fields": {"keep": {"raw_label": "label", "score": "score"}}},
                {"python": {"function": "labels:normalise"}},
            ],
        )
        (tmp_path / "labels.py").write_text(
            "from llmrun.errors import PostprocessError\n"
            "def normalise(result):\n"
            "    label = result.fields['raw_label'].lower()\n"
            "    if label not in ('positive', 'negative'):\n"
            "        raise PostprocessError(f'unknown label {label!r}')\n"
            "    return {'label': label}\n",
            encoding="utf-8",
        )
        path = write_recipe(tmp_path, recipe)
        done = run_cli("run", str(path), "--quiet", "--trust")
    assert done.returncode == 1, done.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["r1"]["status"] == "ok"
    assert rows["r1"]["fields"] == {"raw_label": "Positive", "score": 9, "label": "positive"}
    for rid, message in (("r2", "no JSON found"), ("r3", "unknown label 'angry'")):
        assert rows[rid]["status"] == "error"
        assert rows[rid]["error"]["type"] == "postprocess"
        assert message in rows[rid]["error"]["message"]
        assert rows[rid]["response"]["text"] == replies[rid]  # the paid-for reply is kept
