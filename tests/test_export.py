"""`llmrun export` through the real CLI, and the csv/json writers as a run's own output
(resumed like jsonl)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmrun.hookspecs import hookimpl
from llmrun.job.export import export, flatten
from llmrun.plugins import load_registry
from llmrun.testing.fake_openai import FakeOpenAI

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe


@pytest.fixture(scope="module")
def labelled_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real mock run over 8 records whose rows carry nested fields."""
    folder = tmp_path_factory.mktemp("labelled")
    write_jsonl(folder / "data.jsonl", make_records(8))
    recipe = basic_recipe(
        {"name": "mock", "replies": ["positive", "negative"]},
        postprocess=[{"choices": {"labels": ["positive", "negative"]}}],
    )
    path = write_recipe(folder, recipe)
    done = run_cli("run", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def labelled(labelled_once: Path, tmp_path: Path) -> Path:
    """A copy of that run's folder (recipe, data, output) for one test to change."""
    shutil.copytree(labelled_once, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_flatten() -> None:
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}, "f": None}) == {
        "a.b.c": 1,
        "a.d": [],
        "e": {},
        "f": None,
    }


def test_export_csv_with_chosen_fields(labelled: Path) -> None:
    tmp_path = labelled
    done = run_cli(
        "export", "out.jsonl", "--to", "csv", "--fields", "id,fields,record.text", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 8 row(s), 3 column(s)" in done.stderr
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "fields.label", "record.text"]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert table[1:] == [[r["id"], r["fields"]["label"], r["record"]["text"]] for r in rows]
    assert {line[1] for line in table[1:]} <= {"positive", "negative"}


def test_export_json_all_columns(labelled: Path) -> None:
    tmp_path = labelled
    done = run_cli("export", "out.jsonl", "--to", "json", "-o", "exp/all.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    exported = json.loads((tmp_path / "exp/all.json").read_text(encoding="utf-8"))
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert exported == [flatten(r) for r in rows]
    assert "response.usage.input_tokens" in exported[0]


def test_export_in_input_order(labelled: Path) -> None:
    tmp_path, recipe = labelled, labelled / "recipe.yaml"
    out = tmp_path / "out.jsonl"
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(reversed(lines)), encoding="utf-8")  # as if finished backwards
    plain = run_cli("export", "out.jsonl", "--to", "json", "--fields", "id", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    ids = [r["id"] for r in json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))]
    assert ids == [json.loads(line)["id"] for line in reversed(lines)]  # the file's order
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
def test_export_errors_are_clear(labelled_once: Path, args: list[str], message: str) -> None:
    done = run_cli("export", "out.jsonl", *args, cwd=labelled_once)
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


class FolderWriter:
    """A stand-in for a plugin writer that writes a folder (as the parquet plugin does)."""

    options_schema = {"type": "object", "required": ["path"], "properties": {"path": {}}}

    def __init__(self, options: Any, context: Any) -> None:
        self.path = Path(options["path"])
        self.batches: list[list[dict[str, Any]]] = []

    def open(self) -> Any:
        self.path.mkdir(parents=True)
        return iter(())

    def write(self, rows: Any) -> None:
        n = len(list(self.path.iterdir()))
        (self.path / f"part-{n}.json").write_text(json.dumps(list(rows)), encoding="utf-8")

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


@hookimpl
def register_writers(register: Any) -> None:
    register("parquet", FolderWriter)


class ReadableFolderWriter(FolderWriter):
    """A third-party writer whose output is a folder of parts it can read back (``read()``, as
    the parquet plugin's): a run's output that is no JSONL file."""

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        self.path = context.base_dir / self.path

    def open(self) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.read()

    def read(self) -> Any:
        parts = sorted(self.path.glob("part-*.json"), key=lambda p: int(p.stem[5:]))
        for part in parts:
            yield from json.loads(part.read_text(encoding="utf-8"))


@hookimpl
def register_readable_folder(register: Any) -> None:
    register("folder", ReadableFolderWriter)


def test_export_uses_a_plugin_writer_by_name(labelled: Path) -> None:
    plugin = SimpleNamespace(register_writers=register_writers)
    registry = load_registry(entry_points=False, plugins={"folder": plugin})
    target = labelled / "out.parquet"
    for _ in range(2):  # the second export replaces the first folder
        summary = export(
            labelled / "out.jsonl", target, "parquet", registry, fields=["id", "fields.label"]
        )
    assert summary.rows == 8 and summary.columns == ["id", "fields.label"]
    (part,) = target.iterdir()
    rows = json.loads(part.read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(labelled / "out.jsonl")]
    assert all(set(r) == {"id", "fields.label"} for r in rows)
    assert [p.name for p in labelled.iterdir() if p.name.startswith(".")] == []


def _folder_run(tmp_path: Path) -> tuple[Path, Any]:
    """A real run whose output is written by the folder writer, in a registry with it."""
    from llmrun import open_recipe, run_recipe_sync

    plugin = SimpleNamespace(register_writers=register_readable_folder)
    registry = load_registry(entry_points=False, plugins={"folder": plugin})
    write_jsonl(tmp_path / "data.jsonl", make_records(8))
    recipe = basic_recipe(
        {"name": "mock", "replies": ["positive", "negative"]},
        postprocess=[{"choices": {"labels": ["positive", "negative"]}}],
        output={"writer": "folder", "path": "out.folder"},
    )
    path = write_recipe(tmp_path, recipe)
    summary = run_recipe_sync(path, registry=registry, progress="none")
    assert (summary.status, summary.stats.ok) == ("completed", 8)
    return path, open_recipe(path, registry=registry)


def test_export_reads_a_folder_output_through_its_writer(tmp_path: Path) -> None:
    """export reads the output with the writer that wrote it (its read()), never as JSONL."""
    _, (recipe, registry) = _folder_run(tmp_path)
    folder = tmp_path / "out.folder"
    assert folder.is_dir() and len(list(folder.iterdir())) >= 1
    written = list(
        ReadableFolderWriter({"path": str(folder)}, SimpleNamespace(base_dir=tmp_path)).read()
    )
    assert sorted(r["id"] for r in written) == [f"r{i:05d}" for i in range(8)]

    # Named with --from (the Python API's source_writer) ...
    summary = export(
        folder,
        tmp_path / "a.json",
        "json",
        registry,
        fields=["id", "fields.label"],
        source_writer="folder",
    )
    assert summary.rows == 8 and summary.columns == ["id", "fields.label"]
    exported = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert exported == [{"id": r["id"], "fields.label": r["fields"]["label"]} for r in written]
    # ... or the recipe's own writer, in the input's order: the parts in reverse order first.
    for part in folder.iterdir():
        rows = json.loads(part.read_text(encoding="utf-8"))
        part.write_text(json.dumps(rows[::-1]), encoding="utf-8")
    summary = export(
        folder, tmp_path / "b.csv", "csv", registry, fields=["id"], order="input", recipe=recipe
    )
    with open(tmp_path / "b.csv", encoding="utf-8", newline="") as fh:
        ids = [row[0] for row in csv.reader(fh)][1:]
    assert ids == [f"r{i:05d}" for i in range(8)]
    assert summary.missing == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no spool left


def test_export_of_a_folder_needs_its_writer(tmp_path: Path) -> None:
    _folder_run(tmp_path)
    done = run_cli("export", "out.folder", "--to", "csv", cwd=tmp_path)
    assert done.returncode == 2
    assert "is a folder, not a JSONL output" in done.stderr and "--from" in done.stderr
    # A writer that cannot read its output back is refused by name.
    done = run_cli("export", "out.folder", "--from", "csv", "--to", "json", cwd=tmp_path)
    assert done.returncode == 2
    assert "the 'csv' writer cannot read its output back" in done.stderr


def test_export_from_jsonl_by_name_through_the_cli(labelled: Path) -> None:
    done = run_cli(
        "export", "out.jsonl", "--from", "jsonl", "--to", "json", "--fields", "id", cwd=labelled
    )
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in json.loads((labelled / "out.json").read_text(encoding="utf-8"))]
    assert ids == [r["id"] for r in read_jsonl(labelled / "out.jsonl")]


def test_export_says_how_many_damaged_lines_it_left_out(labelled: Path) -> None:
    # A line broken by hand (or a disk) is not a row: it is left out, and said so.
    out = labelled / "out.jsonl"
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    damaged = ['{"id": "r9", "stat\n', "\n", "[1, 2]\n"]  # a blank line is no damage
    out.write_text("".join([lines[0], *damaged, *lines[1:]]), "utf-8")
    done = run_cli("export", "out.jsonl", "--to", "json", cwd=labelled)
    assert done.returncode == 0, done.stderr
    assert "wrote 8 row(s)" in done.stderr
    assert "skipped 2 damaged line(s) of the output" in done.stderr
