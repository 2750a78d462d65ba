"""`llmrun export` through the real CLI, and the csv/json writers as a run's own output
(resumed like jsonl)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.export import flatten
from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe


def labelled_run(folder: Path, n: int = 6) -> Path:
    """A real mock run whose rows carry nested fields; returns the recipe path."""
    write_jsonl(folder / "data.jsonl", make_records(n))
    recipe = basic_recipe(
        {"name": "mock", "replies": ["positive", "negative"]},
        postprocess=[{"choices": {"labels": ["positive", "negative"]}}],
    )
    path = write_recipe(folder, recipe)
    done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    return path


def test_flatten() -> None:
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}, "f": None}) == {
        "a.b.c": 1,
        "a.d": [],
        "e": {},
        "f": None,
    }


def test_export_csv_with_chosen_fields(tmp_path: Path) -> None:
    labelled_run(tmp_path)
    done = run_cli(
        "export", "out.jsonl", "--to", "csv", "--fields", "id,fields,record.text", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 6 row(s), 3 column(s)" in done.stderr
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "fields.label", "record.text"]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert table[1:] == [[r["id"], r["fields"]["label"], r["record"]["text"]] for r in rows]
    assert {line[1] for line in table[1:]} <= {"positive", "negative"}


def test_export_json_all_columns(tmp_path: Path) -> None:
    labelled_run(tmp_path, n=3)
    done = run_cli("export", "out.jsonl", "--to", "json", "-o", "exp/all.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    exported = json.loads((tmp_path / "exp/all.json").read_text(encoding="utf-8"))
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert exported == [flatten(r) for r in rows]
    assert "response.usage.input_tokens" in exported[0]


def test_export_in_input_order(tmp_path: Path) -> None:
    recipe = labelled_run(tmp_path, n=8)
    out = tmp_path / "out.jsonl"
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(reversed(lines)), encoding="utf-8")  # as if finished backwards
    plain = run_cli("export", "out.jsonl", "--to", "json", "--fields", "id", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    ids = [r["id"] for r in json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))]
    assert ids == [f"r{i:05d}" for i in reversed(range(8))]
    ordered = run_cli(
        "export",
        "out.jsonl",
        "--to",
        "json",
        "--fields",
        "id",
        "--order",
        "input",
        "--recipe",
        str(recipe),
        cwd=tmp_path,
    )
    assert ordered.returncode == 0, ordered.stderr
    ids = [r["id"] for r in json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))]
    assert ids == [f"r{i:05d}" for i in range(8)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "parquet"], "pip install llmrun-parquet"),
        (["--to", "csv", "--fields", "id,nope"], "no such field: nope"),
        (["--to", "csv", "--order", "input"], "needs the recipe"),
        (["--to", "xlsx"], "unknown writer 'xlsx'"),
    ],
)
def test_export_errors_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    labelled_run(tmp_path, n=1)
    done = run_cli("export", "out.jsonl", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize(("writer", "suffix"), [("csv", ".csv"), ("json", ".json")])
def test_csv_and_json_writers_resume_a_run(tmp_path: Path, writer: str, suffix: str) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    with FakeOpenAI() as server:
        provider: dict[str, Any] = {"name": "openai", "base_url": server.url, "model": "gpt-t"}
        output = {"path": f"out{suffix}", "writer": writer}
        path = write_recipe(tmp_path, basic_recipe(provider, output=output))
        assert run_cli("run", str(path), "--quiet", "--limit", "2").returncode == 0
        done = run_cli("run", str(path), "--quiet")
        assert done.returncode == 0, done.stderr
        assert server.total_requests == 5  # nothing called twice
    target = tmp_path / f"out{suffix}"
    if writer == "csv":
        with open(target, encoding="utf-8", newline="") as fh:
            rows: list[dict[str, Any]] = list(csv.DictReader(fh))
        assert rows[0]["record.text"] == "record number 0"
    else:
        rows = json.loads(target.read_text(encoding="utf-8"))
        assert rows[0]["record"]["text"] == "record number 0"
    assert sorted(r["id"] for r in rows) == [f"r{i:05d}" for i in range(5)]
    assert {r["status"] for r in rows} == {"ok"}


def test_json_writer_drops_a_torn_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(3))
    recipe = basic_recipe({"name": "mock"}, output={"path": "out.json", "writer": "json"})
    path = write_recipe(tmp_path, recipe)
    assert run_cli("run", str(path), "--quiet", "--limit", "2").returncode == 0
    target = tmp_path / "out.json"
    whole = target.read_text(encoding="utf-8")
    # A crash: the closing bracket never came and the last row was cut in half.
    target.write_text(whole.removesuffix("]\n")[:-20], encoding="utf-8")
    done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    rows = json.loads(target.read_text(encoding="utf-8"))
    assert sorted(r["id"] for r in rows) == ["r00000", "r00001", "r00002"]
