"""`llmrun repost` through the real CLI: a changed postprocessor chain is applied to the stored
replies with no request reaching the server, the output is replaced atomically and the old one
kept, call errors are left alone, and a later run finds nothing to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmrun.job.store import RunState
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import basic_recipe, read_jsonl, run_cli, write_jsonl, write_recipe

REPLIES = {
    "r1": "  The review is POSITIVE. ",
    "r2": "negative",
    "r3": "I would call it neutral",
    "r4": "(refused)",  # the server answers 400 for this one: a call error row
    "r5": "dunno",
}
LABELS = ["positive", "negative", "neutral"]


def rid(body: Any) -> str:
    return str(body["messages"][-1]["content"]).split()[0].removeprefix("id=")


def fault(request: RecordedRequest) -> Fault | None:
    return Fault(status=400) if rid(request.body) == "r4" else None


def setup(folder: Path, server: FakeOpenAI, postprocess: list[Any]) -> Path:
    write_jsonl(folder / "data.jsonl", [{"id": i, "text": f"review {i}"} for i in REPLIES])
    provider = {"name": "openai", "base_url": server.url, "model": "gpt-test"}
    return write_recipe(folder, basic_recipe(provider, postprocess=postprocess))


def test_repost_applies_a_new_chain_without_calling(tmp_path: Path) -> None:
    with FakeOpenAI(reply=lambda body: REPLIES[rid(body)], fault=fault) as server:
        recipe = setup(tmp_path, server, ["strip"])
        first = run_cli("run", str(recipe), "--quiet")
        assert first.returncode == 1, first.stderr
        calls = server.total_requests
        output = tmp_path / "out.jsonl"
        before_text = output.read_text(encoding="utf-8")
        before = {r["id"]: r for r in read_jsonl(output)}
        assert before["r1"]["fields"] == {} and before["r4"]["status"] == "error"

        setup(tmp_path, server, ["strip", {"choices": {"labels": LABELS}}])
        done = run_cli("repost", str(recipe))
        assert done.returncode == 1, done.stderr  # r4 (call error) and r5 remain errors
        assert "reposted 4 row(s): 3 ok, 1 error, 4 changed; 1 left" in done.stderr
        assert server.total_requests == calls  # not one request

        rows = {r["id"]: r for r in read_jsonl(output)}
        assert list(rows) == list(before)  # same rows, same order
        assert {i: rows[i]["fields"].get("label") for i in ("r1", "r2", "r3")} == {
            "r1": "positive",
            "r2": "negative",
            "r3": "neutral",
        }
        assert rows["r5"]["status"] == "error" and rows["r5"]["error"]["type"] == "postprocess"
        assert rows["r5"]["response"]["text"] == "dunno"  # kept for the next repost
        assert rows["r4"] == before["r4"]  # the call error is untouched
        new_hash = rows["r1"]["recipe_hash"]
        assert new_hash != before["r1"]["recipe_hash"]
        for i in ("r1", "r2", "r3", "r5"):
            assert rows[i]["recipe_hash"] == new_hash
            assert rows[i]["response"] == before[i]["response"]
            assert rows[i]["attempts"] == before[i]["attempts"]
        state = RunState(output)
        manifest = state.read_manifest()
        assert manifest and manifest["recipe_hash"] == new_hash
        assert manifest["reposts"][-1]["redone"] == 4
        (kept,) = state.dir.glob("before-repost-*.jsonl")
        assert kept.read_text(encoding="utf-8") == before_text

        # An alias fixes r5 the same way, still without a call.
        chain = ["strip", {"choices": {"labels": LABELS, "aliases": {"dunno": "neutral"}}}]
        setup(tmp_path, server, chain)
        again = run_cli("repost", str(recipe), "--json")
        assert again.returncode == 1  # r4 is still a call error
        counts = json.loads(again.stdout)
        assert (counts["redone"], counts["ok"], counts["error"], counts["kept"]) == (4, 4, 0, 1)
        assert {r["id"]: r for r in read_jsonl(output)}["r5"]["fields"] == {"label": "neutral"}
        assert len(list(state.dir.glob("before-repost-*.jsonl"))) == 2

        # The run that follows finds every record done and sees no changed recipe.
        rerun = run_cli("run", str(recipe), "--quiet")
        assert rerun.returncode == 1
        assert "recipe changed" not in rerun.stderr
        assert server.total_requests == calls


def test_repost_keeps_damaged_lines_and_respects_the_lock(tmp_path: Path) -> None:
    with FakeOpenAI(reply=lambda body: "negative") as server:
        recipe = setup(tmp_path, server, [])
        assert run_cli("run", str(recipe), "--quiet").returncode == 0
    output = tmp_path / "out.jsonl"
    with open(output, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with RunState(output).locked():
        busy = run_cli("repost", str(recipe))
    assert busy.returncode == 4 and "being written by another llmrun run" in busy.stderr
    setup(tmp_path, server, [{"regex": {"pattern": "(?P<word>neg)"}}])
    done = run_cli("repost", str(recipe))
    assert done.returncode == 0, done.stderr
    assert "1 damaged line(s) copied unchanged" in done.stderr
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[-1] == "{not json"
    assert [json.loads(x)["fields"] for x in lines[:-1]] == [{"word": "neg"}] * 5


def test_repost_without_output_is_a_clear_error(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        recipe = setup(tmp_path, server, ["strip"])
    done = run_cli("repost", str(recipe))
    assert done.returncode == 2
    assert "no output at" in done.stderr and "run the recipe first" in done.stderr


def test_repost_refuses_when_the_calls_changed(tmp_path: Path) -> None:
    with FakeOpenAI(reply=lambda body: "negative") as server:
        recipe = setup(tmp_path, server, [])
        assert run_cli("run", str(recipe), "--quiet").returncode == 0
        before = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
        changed = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        changed["prompt"]["user"] = "Summarise: {{ text }}"
        changed["postprocess"] = [{"fields": {"text": "answer"}}]
        write_recipe(tmp_path, changed)
        refused = run_cli("repost", str(recipe))
        assert refused.returncode == 2
        assert "prompt, provider or generation changed" in refused.stderr
        assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == before
        forced = run_cli("repost", str(recipe), "--force")
        assert forced.returncode == 0, forced.stderr
        assert read_jsonl(tmp_path / "out.jsonl")[0]["fields"] == {"answer": "negative"}
        assert server.total_requests == 5
