"""Record selection: filter, shard, sample, offset and limit — on the Selection itself, and
through the real CLI with resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from llmrun.errors import RecipeError
from llmrun.plugins import load_registry
from llmrun.recipe.load import load_recipe
from llmrun.recipe.selection import Selection, parse_shard

from .conftest import (
    basic_recipe,
    make_records,
    read_cli,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_recipe,
)

Item = tuple[str, dict[str, Any] | None, str | None]  # (id, data or None, error)


def items(n: int, bad: tuple[int, ...] = ()) -> list[Item]:
    return [
        (f"r{i}", None, "unreadable") if i in bad else (f"r{i}", {"i": i, "even": i % 2 == 0}, None)
        for i in range(n)
    ]


def run(selection: Selection, source: list[Item]) -> list[Item]:
    return list(
        selection.select(
            iter(source),
            key=lambda it: (it[0], it[1] if it[2] is None else None),
            on_error=lambda it, message: (it[0], it[1], message),
        )
    )


def ids(selected: list[Item]) -> list[str]:
    return [it[0] for it in selected]


def test_shards_cover_everything_without_overlap():
    source = items(1000, bad=(3, 500))
    shards = [ids(run(Selection(shard=(i, 4)), source)) for i in range(4)]
    every = [x for shard in shards for x in shard]
    assert sorted(every) == sorted(ids(source))  # covered, and no id twice
    assert all(150 < len(s) < 350 for s in shards)  # a hash spreads them
    assert all(s == sorted(s, key=lambda x: int(x[1:])) for s in shards)  # source order kept
    assert run(Selection(shard=(0, 1)), source) == source


def test_fraction_sample_is_seeded_stable_and_nested():
    source = items(2000)
    tenth = ids(run(Selection(sample=0.1, seed=7), source))
    assert 120 < len(tenth) < 280
    assert tenth == ids(run(Selection(sample=0.1, seed=7), source))  # same every run
    shuffled = source[:]
    random.Random(1).shuffle(shuffled)
    assert set(ids(run(Selection(sample=0.1, seed=7), shuffled))) == set(tenth)  # order-free
    assert set(tenth) <= set(ids(run(Selection(sample=0.3, seed=7), source)))  # widening
    assert set(tenth) != set(ids(run(Selection(sample=0.1, seed=8), source)))  # another seed
    assert run(Selection(sample=1.0), source) == source


def test_count_sample_is_exact_in_source_order_and_order_free():
    source = items(500, bad=(10,))
    picked = ids(run(Selection(sample=25, seed=1), source))
    assert len(picked) == len(set(picked)) == 25
    assert picked == [x for x in ids(source) if x in set(picked)]  # in source order
    shuffled = source[:]
    random.Random(2).shuffle(shuffled)
    assert set(ids(run(Selection(sample=25, seed=1), shuffled))) == set(picked)
    assert set(picked) <= set(ids(run(Selection(sample=50, seed=1), source)))
    assert len(run(Selection(sample=600), source)) == 500  # more than there is: all
    assert Selection(sample=5.0).sample_count == 5  # YAML "5.0" means a count too


def test_filter_keeps_matching_records_and_reports_failures():
    source = items(6, bad=(4,))
    source.append(("odd-shape", {"other": 1}, None))
    selected = run(Selection(filter="even and i > 0"), source)
    assert ids(selected) == ["r2", "r4", "odd-shape"]  # the unreadable r4 stays: it is reported
    failed = selected[-1]
    assert failed[2] is not None and failed[2].startswith("data.filter:")
    assert "'even' is undefined" in failed[2]
    guarded = run(Selection(filter="record.even is defined and even"), source)
    assert ids(guarded) == ["r0", "r2", "r4"]


def test_offset_and_limit_apply_after_the_other_steps():
    source = items(20)
    selected = run(Selection(filter="even", offset=2, limit=3), source)
    assert ids(selected) == ["r4", "r6", "r8"]
    assert run(Selection(limit=0), source) == []


def test_total_is_known_only_when_exact():
    assert Selection().total(10) == 10
    assert Selection(offset=3, limit=5).total(10) == 5
    assert Selection(offset=8, limit=5).total(10) == 2
    assert Selection(sample=4).total(10) == 4
    assert Selection(sample=40).total(10) == 10
    assert Selection(filter="x").total(10) is None
    assert Selection(shard=(0, 2)).total(10) is None
    assert Selection(sample=0.5).total(10) is None
    assert Selection().total(None) is None
    assert not Selection(filter="x").needs_count() and Selection(sample=3).needs_count()


def test_parse_shard():
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("8/8", "1/0", "a/2", "3", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


# -- in the recipe ---------------------------------------------------------------------------


def recipe_file(tmp_path: Path, **data: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", make_records(60))
    return write_recipe(
        tmp_path, basic_recipe({"name": "mock"}, data={"path": "data.jsonl", "id": "id", **data})
    )


def test_bad_shard_and_filter_are_recipe_errors_with_lines(tmp_path: Path):
    path = recipe_file(tmp_path, shard="4/4", filter="lang ==")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, load_registry(entry_points=False))
    problems = {p.path: p for p in info.value.problems}
    assert "need 0 <= i < n" in problems["data.shard"].message
    assert problems["data.filter"].message.startswith("filter expression:")
    assert problems["data.shard"].line == 5 and problems["data.filter"].line == 6


def test_job_hash_changes_with_the_filter_only(tmp_path: Path):
    registry = load_registry(entry_points=False)
    base = load_recipe(recipe_file(tmp_path), registry).job_hash
    same = [
        {"shard": "1/3"},
        {"sample": 0.5, "seed": 3},
        {"offset": 4, "limit": 2},
    ]
    for extra in same:
        assert load_recipe(recipe_file(tmp_path, **extra), registry).job_hash == base, extra
    assert load_recipe(recipe_file(tmp_path, filter="id != 'r1'"), registry).job_hash != base


# -- through the CLI -------------------------------------------------------------------------


def test_cli_shards_cover_all_records_once(tmp_path: Path):
    write_jsonl(tmp_path / "data.jsonl", make_records(40))
    with (tmp_path / "data.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{broken\n")
    recipe = write_recipe(
        tmp_path, basic_recipe({"name": "mock"}, data={"path": "data.jsonl", "id": "id"})
    )
    seen: list[str] = []
    for i in range(3):
        out = f"out-{i}.jsonl"
        result = run_cli(
            "run",
            str(recipe),
            "--quiet",
            "--set",
            f"data.shard={i}/3",
            "--set",
            f"output.path={out}",
        )
        assert result.returncode in (0, 1), result.stderr
        seen += [row["id"] for row in read_jsonl(tmp_path / out)]
    assert sorted(seen) == sorted([f"r{i:05d}" for i in range(40)] + ["data.jsonl:41"])


def test_cli_sample_is_the_same_across_runs_and_resumes(tmp_path: Path):
    def sampled(folder: Path, *extra: str) -> set[str]:
        folder.mkdir()
        write_jsonl(folder / "data.jsonl", make_records(200))
        recipe = write_recipe(
            folder,
            basic_recipe({"name": "mock"}, data={"path": "data.jsonl", "id": "id", "sample": 30}),
        )
        for args in (extra, ()):  # a first run (maybe cut short), then a resume
            result = run_cli("run", str(recipe), "--json", *args)
            assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["total"] == 30  # a count sample keeps the total exact
        rows = read_jsonl(folder / "out.jsonl")
        assert len(rows) == 30
        return {row["id"] for row in rows}

    whole = sampled(tmp_path / "a")
    resumed = sampled(tmp_path / "b", "--limit", "7")
    assert whole == resumed


def test_cli_filter_and_offset(tmp_path: Path):
    rows = [{"id": f"r{i}", "text": "t", "lang": "en" if i % 3 else "fr"} for i in range(30)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    recipe = write_recipe(
        tmp_path,
        basic_recipe(
            {"name": "mock"},
            data={"path": "data.jsonl", "id": "id", "filter": 'lang == "fr"', "offset": 2},
        ),
    )
    result = run_cli("run", str(recipe), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 8  # a filter: known once reading ends
    # Rows are written as calls finish, not in input order.
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == sorted(
        f"r{i}" for i in range(6, 30, 3)
    )
    checked = read_cli("validate", str(recipe))
    assert checked.returncode == 0, checked.stderr
    assert "8 record(s) checked" in checked.stderr
