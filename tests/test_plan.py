"""`llmrun plan`: counts, already-done rows (read-only), prompts, tokens, cost, duration and
warnings, without calling anything."""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llmrun.job.planning import context_window, make_plan
from llmrun.job.store import RunState
from llmrun.plugins import load_registry
from llmrun.recipe import tokens
from llmrun.recipe.load import load_recipe
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import SourceRecord

from .conftest import basic_recipe, make_records, read_cli, write_jsonl, write_recipe

PRICES = {"priced-model": {"input": 1.0, "output": 2.0, "batch": 0.5}}


def plan_json(recipe: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = read_cli("plan", str(recipe), "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_plan_counts_done_rows_read_only_and_calls_nothing(tmp_path: Path, fake_openai: FakeOpenAI):
    write_jsonl(tmp_path / "data.jsonl", make_records(10))
    provider = {"name": "openai", "base_url": fake_openai.url, "model": "priced-model"}
    recipe = write_recipe(
        tmp_path,
        basic_recipe(provider, prices=PRICES, generation={"max_tokens": 40}),
    )
    # Four rows already done (one an error row: final too) and a torn tail a crash left.
    done = [
        {"id": "r00000", "status": "ok", "response": {"usage": {"output_tokens": 10}}},
        {"id": "r00001", "status": "ok", "response": {"usage": {"output_tokens": 30}}},
        {"id": "r00002", "status": "error", "response": None},
        {"id": "r00003", "status": "ok", "response": {"usage": {"output_tokens": 20}}},
    ]
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": "r00004", "sta')
    before = out.read_bytes()
    # Another run holds the output's lock: plan neither waits for it nor takes it.
    with RunState(out).locked():
        plan = plan_json(recipe)
    assert out.read_bytes() == before  # the torn tail is not repaired by plan
    assert fake_openai.total_requests == 0
    assert plan["records"] == 10 and plan["done"] == 4 and plan["to_send"] == 6
    assert plan["sampled"] == 6 and plan["model"] == "priced-model"
    # The next three prompts to send, rendered.
    assert [p[1]["content"] for p in plan["prompts"]] == [
        "id=r00004 record number 4",
        "id=r00005 record number 5",
        "id=r00006 record number 6",
    ]
    assert plan["prompts"][0][0] == {"role": "system", "content": "You are terse."}
    assert plan["token_method"] == tokens.method()
    # Typical output: the mean the done rows reported (20), capped by the ceiling (40).
    assert plan["output_tokens_typical"] == 6 * 20
    assert plan["output_tokens_max"] == 6 * 40
    expected_input = sum(
        tokens.input_tokens(
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"id=r{i:05d} record number {i}"},
            ]
        )
        for i in range(4, 10)
    )
    assert plan["input_tokens"] == expected_input
    low = (expected_input * 1.0 + 6 * 20 * 2.0) / 1e6
    high = (expected_input * 1.0 + 6 * 40 * 2.0) / 1e6
    assert plan["cost_usd_low"] == round(low, 6)
    assert plan["cost_usd_high"] == round(high, 6)
    assert plan["warnings"] == ["context window of 'priced-model' unknown: not checked"]


def test_plan_text_output_and_limits(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", make_records(120))
    recipe = write_recipe(
        tmp_path,
        basic_recipe(
            {"name": "mock", "model": "gpt-4o-mini"},
            run={"concurrency": 4, "requests_per_minute": 60},
        ),
    )
    result = read_cli("plan", str(recipe))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "records:   120 (0 already done, 120 to send)" in text
    assert "model:     gpt-4o-mini (direct mode)" in text
    # 120 requests at 60 a minute: two minutes, the slowest bound.
    assert "duration:  ~2 min (set by requests_per_minute 60)" in text
    assert text.count("--- prompt ") == 3
    assert "[user] id=r00000 record number 0" in text
    cost = next(line for line in text.splitlines() if line.startswith("cost:"))
    assert "unknown" not in cost  # gpt-4o-mini is in the built-in price table


def test_plan_tokens_per_minute_bound(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", make_records(10))
    recipe = load_recipe(
        write_recipe(tmp_path, basic_recipe({"name": "mock"}, generation={"max_tokens": 100})),
        load_registry(entry_points=False),
        environ={},
    )
    run = dataclasses.replace(recipe.run, tokens_per_minute=1000)
    plan = make_plan(dataclasses.replace(recipe, run=run), load_registry(entry_points=False))
    assert plan.duration_bound == "tokens_per_minute 1000"
    assert plan.duration_s == round((plan.input_tokens + 10 * 100) / 1000 * 60, 1)


def test_plan_batch_mode_prices_at_the_batch_discount(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    registry = load_registry(entry_points=False)
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            basic_recipe({"name": "mock", "model": "priced-model"}, prices=PRICES),
        ),
        registry,
        environ={},
    )
    direct = make_plan(recipe, registry)
    run = types.SimpleNamespace(**{**dataclasses.asdict(recipe.run), "mode": "batch"})
    batch = make_plan(dataclasses.replace(recipe, run=run), registry)
    assert direct.cost_usd_high and batch.cost_usd_high
    assert batch.cost_usd_high == round(direct.cost_usd_high * 0.5, 6)
    assert batch.mode == "batch" and batch.duration_s is None
    assert "batch" in batch.duration_bound


def test_plan_warnings(tmp_path: Path):
    records = make_records(4)
    del records[1]["text"]  # lacks a prompt variable
    records[2]["text"] = "word " * 9000  # ~11k tokens: over the mock model's 8192
    records.append({"text": "no id"})
    write_jsonl(tmp_path / "data.jsonl", records)
    with (tmp_path / "data.jsonl").open("a") as fh:
        fh.write("{not json\n")
    recipe = write_recipe(
        tmp_path,
        basic_recipe({"name": "openai", "model": "no-such-model", "api_keys": ["${PLAN_KEY}"]}),
    )
    plan = plan_json(recipe, env={"PLAN_KEY": ""})  # empty: set, so no env warning
    warnings = "\n".join(plan["warnings"])
    assert "1 record(s) lack the prompt variable(s) text (data.jsonl:2)" in warnings
    assert "no known price for model 'no-such-model'" in warnings
    assert plan["cost_usd_low"] is None
    assert "1 record(s) cannot be read" in warnings
    assert "1 record(s) have no 'id' field (data.id) (data.jsonl:5)" in warnings
    assert plan["records"] == 6 and plan["unreadable"] == 1 and plan["to_send"] == 4

    unset = read_cli("plan", str(recipe), env={"PLAN_KEY_X": "1"})
    assert unset.returncode == 0, unset.stderr
    assert "environment variable ${PLAN_KEY} is not set" in unset.stdout

    mock = write_recipe(tmp_path, basic_recipe({"name": "mock"}), name="mock.yaml")
    plan = plan_json(mock)
    assert context_window("mock") == 8192
    assert any(
        "1 of 3 sampled prompt(s) need more than mock's context window of 8192" in w
        for w in plan["warnings"]
    ), plan["warnings"]


def test_plan_sample_limits_rendering_and_extrapolates(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", [{"id": str(i), "text": "x" * 40} for i in range(50)])
    recipe = write_recipe(tmp_path, basic_recipe({"name": "mock"}))
    full = plan_json(recipe)
    sampled = plan_json(recipe, "--sample", "5")
    assert sampled["sampled"] == 5 and full["sampled"] == 50
    # Every record has the same size, so the extrapolation is close to the full count.
    assert abs(sampled["input_tokens"] - full["input_tokens"]) <= 50 * 2


class Tracked(dict[str, Any]):
    """A record that counts how many of its kind are alive."""

    alive = 0
    peak = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        Tracked.alive += 1
        Tracked.peak = max(Tracked.peak, Tracked.alive)

    def __del__(self) -> None:
        Tracked.alive -= 1


class ManyRecords:
    """A loader of ``count`` generated records (a stand-in for a huge file)."""

    options_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {"count": {"type": "integer"}},
    }

    def __init__(self, options: Mapping[str, Any], context: Any) -> None:
        self.n = int(options["count"])

    def records(self) -> Iterator[SourceRecord]:
        for i in range(self.n):
            yield SourceRecord(Tracked({"id": str(i), "text": f"t{i}"}), f"many:{i}")

    def count(self) -> int:
        return self.n


class ManyPlugin:
    @staticmethod
    def register_loaders(register: Any) -> None:
        register("many", ManyRecords)


def test_plan_streams_records(tmp_path: Path, llmrun_registry: Any):
    import llmrun

    plugin = types.SimpleNamespace(register_loaders=llmrun.hookimpl(ManyPlugin.register_loaders))
    registry = llmrun_registry(many=plugin)
    recipe_path = write_recipe(
        tmp_path,
        basic_recipe({"name": "mock"}, data={"loader": "many", "count": 20000, "id": "id"}),
    )
    recipe = load_recipe(recipe_path, registry, environ={})
    Tracked.alive = Tracked.peak = 0
    plan = make_plan(recipe, registry, sample=10)
    assert plan.records == 20000 and plan.to_send == 20000
    assert Tracked.peak <= 20  # records are looked at one by one, never gathered


def test_plan_limit_missing_data_and_secrets(tmp_path: Path):
    secret = "sk-plan-secret-0123456789"
    write_jsonl(tmp_path / "data.jsonl", make_records(8))
    recipe = write_recipe(
        tmp_path,
        basic_recipe(
            {"name": "openai", "model": "gpt-4o-mini", "api_keys": [secret, "${PLAN_SECRET}"]},
            prompt="{{ text }}",
        ),
    )
    env = {"PLAN_SECRET": secret + "-env"}
    limited = plan_json(recipe, "--limit", "3", env=env)
    assert limited["records"] == 3 and limited["to_send"] == 3
    text = read_cli("plan", str(recipe), env=env)
    json_out = read_cli("plan", str(recipe), "--json", env=env)
    for result in (text, json_out):
        assert result.returncode == 0, result.stderr
        assert secret not in result.stdout + result.stderr
    missing = read_cli("plan", str(recipe), "--set", "data.path=nowhere.jsonl", env=env)
    assert missing.returncode == 2
    assert "data: cannot read the data" in missing.stderr and "nowhere.jsonl" in missing.stderr


class OtherWriter:
    """A writer without read(): plan cannot read its output, so "already done" is unknown.
    Building it is fine (constructors do no I/O); opening or writing is not."""

    options_schema: Mapping[str, Any] = {"type": "object"}

    def __init__(self, options: Mapping[str, Any], context: Any) -> None:
        pass

    def open(self) -> Any:
        raise AssertionError("plan must not open the writer")

    def write(self, rows: Any) -> None:
        raise AssertionError("plan must not write")


def test_plan_with_a_writer_it_cannot_read(tmp_path: Path, llmrun_registry: Any):
    import llmrun

    def register_writers(register: Any) -> None:
        register("other", OtherWriter)

    plugin = types.SimpleNamespace(register_writers=llmrun.hookimpl(register_writers))
    registry = llmrun_registry(other=plugin)
    write_jsonl(tmp_path / "data.jsonl", make_records(3))
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            basic_recipe({"name": "mock"}, output={"writer": "other", "path": "out.db"}),
        ),
        registry,
        environ={},
    )
    plan = make_plan(recipe, registry)
    assert plan.done is None and plan.to_send == 3
    assert plan.warnings[0].startswith("the 'other' writer cannot read its output back")


def test_plan_counts_the_few_shot_examples_the_run_sends(tmp_path: Path):
    # The plan renders the prompt whole, as the run does: two few-shot turns of about 60 words
    # each add to every record's input tokens.
    shot = {"input": "a long example input " * 15, "output": "an example answer " * 15}
    registry = load_registry(entry_points=False)
    plain = basic_recipe({"name": "mock"})
    examples = {"path": "shots.jsonl", "user": "{{ input }}", "assistant": "{{ output }}"}
    with_shots = basic_recipe({"name": "mock"}, prompt={**plain["prompt"], "examples": examples})
    plans = []
    for folder, recipe in (("plain", plain), ("shots", with_shots)):
        (tmp_path / folder).mkdir()
        write_jsonl(tmp_path / folder / "data.jsonl", make_records(10))
        write_jsonl(tmp_path / folder / "shots.jsonl", [shot, shot])
        loaded = load_recipe(write_recipe(tmp_path / folder, recipe), registry, environ={})
        plans.append(make_plan(loaded, registry))
    without, shots = plans
    assert shots.records == without.records == 10
    # Two user and two assistant turns per record, each at least 40 tokens by any count.
    assert shots.input_tokens - without.input_tokens >= 10 * 4 * 40


def test_plan_renders_images_and_warns_of_one_that_is_missing(tmp_path: Path):
    # Images are part of the prompt the plan renders: a missing one is the run's error row
    # (a warning here), not a loader failure.
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    records = make_records(3)
    for record, image in zip(records, ["cat.png", "cat.png", "gone.png"], strict=True):
        record["image"] = image
    write_jsonl(tmp_path / "data.jsonl", records)
    registry = load_registry(entry_points=False)
    recipe = basic_recipe({"name": "mock"})
    recipe["prompt"] = {**recipe["prompt"], "images": "{{ image }}"}
    plan = make_plan(load_recipe(write_recipe(tmp_path, recipe), registry, environ={}), registry)
    assert plan.sampled == 2
    assert any("1 sampled record(s) fail to render" in w and "gone.png" in w for w in plan.warnings)


def test_plan_of_a_steps_recipe_adds_up_every_step_at_its_own_price(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(40))
    recipe = basic_recipe(
        {"name": "openai", "model": "small", "api_keys": ["sk-plan-0123456789"]},
        prices={"small": {"input": 1.0, "output": 1.0}, "big": {"input": 10.0, "output": 10.0}},
    )
    del recipe["prompt"]
    recipe["generation"] = {"max_tokens": 100}
    recipe["steps"] = [
        {"name": "draft", "prompt": "Write about {{ text }}"},
        {
            "name": "judge",
            "provider": {"model": "big"},
            "prompt": "Judge this answer about {{ text }}: {{ steps.draft.text }}",
        },
    ]
    plan = plan_json(write_recipe(tmp_path, recipe))
    draft, judge = plan["steps"]
    assert (draft["name"], draft["model"], judge["name"], judge["model"]) == (
        "draft",
        "small",
        "judge",
        "big",
    )
    assert draft["sampled"] == judge["sampled"] == 40
    # The judge's prompt holds a draft-sized answer: 25 words (a quarter of max_tokens) more.
    assert judge["input_tokens"] >= draft["input_tokens"] + 25 * 40
    assert plan["input_tokens"] == draft["input_tokens"] + judge["input_tokens"]
    assert plan["output_tokens_max"] == 2 * 100 * 40
    assert plan["cost_usd_high"] == pytest.approx(draft["cost_usd_high"] + judge["cost_usd_high"])
    # The judge at ten times the price: its share dominates.
    assert judge["cost_usd_high"] > 5 * draft["cost_usd_high"]
    assert any("steps:" in w for w in plan["warnings"])
