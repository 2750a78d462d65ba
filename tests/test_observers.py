"""Observer hooks: called with the documented arguments; a failing observer never stops a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmrun
import llmrun.values
from llmrun.api import open_recipe
from llmrun.plugins import load_registry

from .conftest import basic_recipe, make_records, write_jsonl, write_recipe


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @llmrun.hookimpl
    def run_started(self, run: Any) -> None:
        self.events.append(("start", dict(run)))

    @llmrun.hookimpl
    def record_done(self, row: Any) -> None:
        self.events.append(("row", row["id"]))

    @llmrun.hookimpl
    def run_finished(self, summary: Any) -> None:
        self.events.append(("end", dict(summary)))


class Broken:
    @llmrun.hookimpl
    def record_done(self, row: Any) -> None:
        raise RuntimeError("observer bug")


def test_observers_see_the_run(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    path = write_recipe(tmp_path, basic_recipe({"name": "mock"}))
    registry = load_registry(entry_points=False)
    recorder, broken = Recorder(), Broken()
    assert registry.manager is not None
    registry.manager.register(recorder)
    registry.manager.register(broken)
    recipe, _ = open_recipe(path, registry=registry)
    summary = llmrun.run_recipe_sync(recipe, registry=registry)
    assert summary.status == "completed" and summary.stats.ok == 5
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["start"] + ["row"] * 5 + ["end"]
    start = recorder.events[0][1]
    assert start["recipe"] == "test" and start["provider"] == "mock" and start["resumed"] == 0
    assert sorted(rid for kind, rid in recorder.events if kind == "row") == [
        f"r{i:05d}" for i in range(5)
    ]
    end = recorder.events[-1][1]
    assert end["status"] == "completed" and end["ok"] == 5 and end["error"] == 0
    # The broken observer was reported once, then dropped; the run went on.
    assert sum("observer bug" in w for w in summary.warnings) == 1


class Typed:
    """Reads the typed values, and asks pluggy to be called first."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.start: llmrun.values.RunStart | None = None
        self.end: llmrun.values.RunEnd | None = None

    @llmrun.hookimpl
    def run_started(self, run: llmrun.values.RunStart) -> None:
        self.start = run

    @llmrun.hookimpl(tryfirst=True)
    def record_done(self, row: llmrun.values.Row) -> None:
        self.order.append("first:" + row["id"])

    @llmrun.hookimpl
    def run_finished(self, summary: llmrun.values.RunEnd) -> None:
        self.end = summary


class Last:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    @llmrun.hookimpl(trylast=True)
    def record_done(self, row: llmrun.values.Row) -> None:
        self.order.append("last:" + row["id"])


class Wrapper:
    def __init__(self) -> None:
        self.around: list[str] = []

    @llmrun.hookimpl(wrapper=True)
    def run_finished(self, summary: llmrun.values.RunEnd) -> Any:
        self.around.append(f"before {summary.status}")
        result = yield
        self.around.append("after")
        return result


def test_observers_are_called_through_pluggy_with_typed_values(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(3))
    path = write_recipe(tmp_path, basic_recipe({"name": "mock"}, run={"concurrency": 1}))
    registry = load_registry(entry_points=False)
    order: list[str] = []
    # Registered last-first: pluggy's tryfirst/trylast, not registration order, decides.
    last, wrapper, typed, broken = Last(order), Wrapper(), Typed(order), Broken()
    assert registry.manager is not None
    for plugin in (typed, broken, last, wrapper):
        registry.manager.register(plugin)
    recipe, _ = open_recipe(path, registry=registry)
    summary = llmrun.run_recipe_sync(recipe, registry=registry)
    assert summary.stats.ok == 3
    # The broken observer sits between them: the trylast one is still called for every row.
    assert order == [f"{when}:r{i:05d}" for i in range(3) for when in ("first", "last")]
    assert typed.start is not None and typed.start.provider == "mock"
    assert typed.start.recipe == "test" and typed.start["resumed"] == 0
    assert typed.end is not None and typed.end.ok == 3 and typed.end.status == "completed"
    # What --json prints, but elapsed_s, which the summary reads again later.
    assert {**dict(typed.end), "elapsed_s": 0, "endpoints": {}} == {
        **summary.to_json(),
        "elapsed_s": 0,
        "endpoints": {},
    }
    assert wrapper.around == ["before completed", "after"]
