"""Prompt templates: includes and imports beside the recipe, few-shot files, filters, images,
and the check of the prompt's fields against the first records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.errors import RecipeError, TemplateError
from llmrun.images import ImageError
from llmrun.plugins import load_registry
from llmrun.recipe.load import load_recipe
from llmrun.recipe.templates import PromptTemplate, truncate_tokens
from llmrun.recipe.tokens import count_text

from .conftest import basic_recipe, read_cli, read_jsonl, run_cli, write_jsonl, write_recipe

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def template(folder: Path, user: Any, **kw: Any) -> PromptTemplate:
    return PromptTemplate([("system", "Be brief."), ("user", user)], {}, folder, **kw)


def user_content(folder: Path, user: Any, record: dict[str, Any], **kw: Any) -> Any:
    return template(folder, user, **kw).render("id1", record).messages[-1]["content"]


def test_include_and_import_read_files_beside_the_recipe(tmp_path: Path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rubric.txt").write_text("Rubric for {{ topic }}.", encoding="utf-8")
    (tmp_path / "macros.j2").write_text(
        "{% macro label(x) %}<{{ x | upper }}>{% endmacro %}", encoding="utf-8"
    )
    user = '{% include "parts/rubric.txt" %} {% import "macros.j2" as m %}{{ m.label(text) }}'
    assert user_content(tmp_path, user, {"topic": "cats", "text": "hi"}) == "Rubric for cats. <HI>"


def test_few_shot_examples_from_files(tmp_path: Path):
    write_jsonl(tmp_path / "shots.jsonl", [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}])
    (tmp_path / "shots.csv").write_text("q,a\n3+3,6\n", encoding="utf-8")
    (tmp_path / "shots.yaml").write_text("- {q: '4+4', a: '8'}\n", encoding="utf-8")
    for name, expected in (
        ("shots.jsonl", "Q: 1+1 A: 2\nQ: 2+2 A: 4\n"),
        ("shots.csv", "Q: 3+3 A: 6\n"),
        ("shots.yaml", "Q: 4+4 A: 8\n"),
    ):
        user = (
            f'{{% for s in load("{name}") %}}Q: {{{{ s.q }}}} A: {{{{ s.a }}}}\n{{% endfor %}}'
            "Q: {{ q }} A:"
        )
        tpl = template(tmp_path, user)
        assert tpl.variables == {"q"}  # load is not a record field
        assert tpl.render("x", {"q": "5+5"}).messages[-1]["content"] == expected + "Q: 5+5 A:"
    with pytest.raises(TemplateError, match=r"load\('missing.jsonl'\)"):
        template(tmp_path, '{{ load("missing.jsonl") }}').render("x", {})


def test_tojson_keeps_unicode_and_does_not_escape_html(tmp_path: Path):
    record = {"item": {"name": "café <b>&'", "n": [1, 2]}}
    assert user_content(tmp_path, "{{ item | tojson }}", record) == json.dumps(
        record["item"], ensure_ascii=False
    )
    assert user_content(tmp_path, "{{ item.n | tojson(2) }}", record) == "[\n  1,\n  2\n]"


def test_truncate_filters(tmp_path: Path):
    text = " ".join(f"word{i}" for i in range(400))
    cut = truncate_tokens(text, 50)
    assert cut.endswith("...") and text.startswith(cut[:-3])
    assert count_text(cut) <= 50 < count_text(text)
    assert count_text(truncate_tokens(text, 51)) >= count_text(cut)  # the longest that fits
    assert truncate_tokens("short", 50) == "short"
    rendered = user_content(tmp_path, "{{ text | truncate_tokens(20, end='') }}", {"text": text})
    assert count_text(rendered) <= 20 and text.startswith(rendered)
    assert user_content(tmp_path, "{{ text | truncate(12) }}", {"text": text}) == "word0..."


def test_images_attach_to_the_last_user_message(tmp_path: Path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(PNG)
    (tmp_path / "img" / "b.png").write_bytes(PNG)
    url = "https://example.invalid/c.png"
    content = user_content(
        tmp_path,
        "Caption {{ name }}",
        {"name": "a", "photos": ["img/b.png", url], "maybe": ""},
        images=["img/{{ name }}.png", '{{ photos | join("\n") }}', "{{ maybe }}"],
        image_detail="low",
    )
    assert content == [
        {"type": "text", "text": "Caption a"},
        {"type": "image", "source": str(tmp_path / "img" / "a.png"), "detail": "low"},
        {"type": "image", "source": str(tmp_path / "img" / "b.png"), "detail": "low"},
        {"type": "image", "source": url, "detail": "low"},
    ]
    # No image for this record: the message stays plain text.
    assert user_content(tmp_path, "x", {"maybe": ""}, images=["{{ maybe }}"]) == "x"


def test_a_missing_local_image_is_a_record_error_naming_it(tmp_path: Path):
    with pytest.raises(ImageError, match=r"image 'nope.png' not found"):
        template(tmp_path, "x", images=["{{ f }}"]).render("id1", {"f": "nope.png"})


def test_image_parts_in_messages(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(PNG)
    messages = [
        (
            "user",
            (
                {"type": "text", "text": "Is {{ what }} here?"},
                {"type": "image", "source": "{{ f }}", "detail": "high"},
            ),
        ),
        ("assistant", "Yes."),
        ("user", "And {{ what }}?"),
    ]
    prompt = PromptTemplate(messages, {}, tmp_path).render("r", {"what": "a cat", "f": "a.png"})
    assert prompt.messages[0]["content"] == [
        {"type": "text", "text": "Is a cat here?"},
        {"type": "image", "source": str(tmp_path / "a.png"), "detail": "high"},
    ]
    assert prompt.messages[2] == {"role": "user", "content": "And a cat?"}


def test_recipe_with_image_parts_and_images_loads(tmp_path: Path):
    recipe = basic_recipe(
        {"name": "mock"},
        prompt={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "{{ text }}"},
                        {"type": "image", "source": "{{ image }}"},
                    ],
                },
            ],
            "images": "{{ extra }}",
            "image_detail": "auto",
        },
    )
    loaded = load_recipe(write_recipe(tmp_path, recipe), load_registry(entry_points=False))
    assert loaded.images == ("{{ extra }}",) and loaded.image_detail == "auto"
    bad = basic_recipe(
        {"name": "mock"}, prompt={"user": "x", "images": "{{ a ", "image_detail": "max"}
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, bad), load_registry(entry_points=False))
    paths = {p.path for p in info.value.problems}
    assert "prompt.image_detail" in paths and "prompt.images" in paths


# -- through the CLI -------------------------------------------------------------------------


def caption_recipe(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(PNG)
    recipe = basic_recipe(
        {"name": "mock"},
        data={"loader": "files", "path": "photos/*.png", "id": "path"},
        prompt={
            "user": "Caption {{ name }}",
            "images": ["{{ image }}", "{{ extra | default('') }}"],
        },
    )
    return write_recipe(tmp_path, recipe)


def test_files_loader_images_reach_the_provider_through_the_cli(tmp_path: Path):
    recipe = caption_recipe(tmp_path)
    (tmp_path / "photos" / "c.png").symlink_to(tmp_path / "photos" / "gone.png")  # dangling
    result = run_cli("run", str(recipe), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # `extra` is guarded by `| default`: not lacking
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "out.jsonl")}
    assert set(rows) == {"photos/a.png", "photos/b.png"}  # a dangling link is not a file
    for row in rows.values():
        assert row["status"] == "ok", row
        # The mock speaks OpenAI's format and echoes the user content it got: the image went
        # out as an image_url part.
        assert "'type': 'image_url'" in row["text"]


def test_a_missing_image_is_an_error_row_and_a_validate_problem(tmp_path: Path):
    write_jsonl(
        tmp_path / "data.jsonl",
        [{"id": "a", "text": "t", "img": "there.png"}, {"id": "b", "text": "t", "img": "gone.png"}],
    )
    (tmp_path / "there.png").write_bytes(PNG)
    recipe = write_recipe(
        tmp_path,
        basic_recipe({"name": "mock"}, prompt={"user": "{{ text }}", "images": "{{ img }}"}),
    )
    result = run_cli("run", str(recipe), "--quiet")
    assert result.returncode == 1, result.stderr
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["a"]["status"] == "ok"
    assert rows["b"]["error"]["type"] == "image"
    assert "image 'gone.png' not found" in rows["b"]["error"]["message"]
    checked = read_cli("validate", str(recipe))
    assert checked.returncode == 2 and "image 'gone.png' not found" in checked.stderr


def test_run_start_warns_about_fields_the_first_records_lack(tmp_path: Path):
    write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"id": "a", "text": "x", "lang": "en"},
            {"id": "b", "text": "y"},
            {"id": "c", "body": "z"},
        ],
    )
    recipe = write_recipe(tmp_path, basic_recipe({"name": "mock"}, prompt="{{ lang }}: {{ text }}"))
    result = run_cli("run", str(recipe), "--json")
    assert result.returncode == 1
    warnings = json.loads(result.stdout)["warnings"]
    assert (
        "the prompt uses fields that the first 3 record(s) lack: lang (2 of 3), text (1 of 3); "
        "fields they have: body, id, lang, text"
    ) in warnings


def test_few_shot_turns_from_a_file(tmp_path: Path):
    write_jsonl(
        tmp_path / "shots.jsonl",
        [{"review": "Great!", "label": "positive"}, {"review": "Meh", "label": "neutral"}],
    )
    recipe = basic_recipe(
        {"name": "mock"},
        prompt={
            "system": "Label the review.",
            "user": "{{ text }}",
            "examples": {"path": "shots.jsonl", "user": "{{ review }}", "assistant": "{{ label }}"},
        },
    )
    loaded = load_recipe(write_recipe(tmp_path, recipe), load_registry(entry_points=False))
    tpl = PromptTemplate(loaded.messages, {}, tmp_path, str(loaded.path), examples=loaded.examples)
    assert tpl.variables == {"text"}  # the examples' fields are not the record's
    assert tpl.render("r", {"text": "Awful"}).messages == [
        {"role": "system", "content": "Label the review."},
        {"role": "user", "content": "Great!"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Meh"},
        {"role": "assistant", "content": "neutral"},
        {"role": "user", "content": "Awful"},
    ]
    bad = {"path": "shots.jsonl", "user": "{{ review }}", "assistant": "{{ answer }}"}
    with pytest.raises(RecipeError, match=r"shots.jsonl, example 1: assistant template"):
        PromptTemplate(loaded.messages, {}, tmp_path, examples=bad)
    with pytest.raises(RecipeError, match=r"cannot read none.jsonl"):
        PromptTemplate(loaded.messages, {}, tmp_path, examples={**bad, "path": "none.jsonl"})


VALUES: dict[str, Any] = {
    "s": "caf\u00e9 \u2603",
    "none": None,
    "yes": True,
    "f": 0.1,
    "big": 10**20,
    "d": {"k": [1, "\u00e9"]},
    "l": [1, 2.5],
    "crlf": "a\r\nb",
    "empty": "",
    "loop": "a field named loop",
}


@pytest.mark.parametrize(
    "source",
    [
        "{{ s }}",
        "Review {{ s }} ({{ f }}/{{big}}, {{ yes }}, {{ none }}):\n{{ d }} {{ l }}{{ empty }}\n",
        "{{- s -}}  x\r\n y {{ record }}\n\n",  # whitespace control, CR LF, the whole record
        "{# a comment #}{{ s }}{% raw %}{{ not a variable }}{% endraw %}",
        "{{ loop }} {{ range }}",  # a field named as a Jinja name; a sandbox global
        "{{ self }}",  # Jinja's own binding: left to Jinja
        "{{ s | upper }} {{ d.k }} {{ l[0] }} {% if yes %}y{% endif %} {{ 'lit' }}",
    ],
)
def test_text_and_variables_render_exactly_as_jinja_renders_them(
    tmp_path: Path, source: str
) -> None:
    # Templates of text and {{ name }} alone skip Jinja's render function (templates.py):
    # what they give must be byte for byte what the sandbox's Jinja gives.
    from llmrun.recipe.templates import make_environment

    want = make_environment(tmp_path).from_string(source).render({**VALUES, "record": VALUES})
    assert user_content(tmp_path, source, VALUES) == want


def test_a_missing_variable_is_named_by_either_route(tmp_path: Path) -> None:
    for source in ("{{ text }} and {{ missing }}", "{{ text | upper }} and {{ missing }}"):
        with pytest.raises(TemplateError, match=r"lacks field.*missing.*it has: text"):
            user_content(tmp_path, source, {"text": "x"})
