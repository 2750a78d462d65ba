"""The one rewriter of the output (`--retry-errors`, `repost`), through the writer plugin's
``rewrite``: the built-in JSONL writer's, on real files, killed or failing part-way; a third-party
writer's; and a third-party writer without one, refused before anything changes. (The parquet
folder's: plugins/llmrun-parquet/tests and tests/test_plugin_distributions.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llmrun
from llmrun import RecipeError, hookimpl, open_recipe, run_recipe_sync
from llmrun.builtins.writers import JsonlWriter
from llmrun.job.store import RunState
from llmrun.plugins import load_registry
from llmrun.report.index import RowIndex
from llmrun.run.repost import repost

from .conftest import basic_recipe, make_records, read_jsonl, run_cli, write_jsonl, write_recipe

# One call in three fails (HTTP 500) and is not retried: an output with error rows.
FAILING = {"name": "mock", "replies": ["positive", "negative"], "error_rate": 0.35, "seed": 7}
NO_RETRY = {"concurrency": 4, "max_retries": 0}


def jsonl_rows(n: int, errors: set[int]) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "status": "error" if i in errors else "ok", "text": f"t{i}"}
        for i in range(n)
    ]


def writer_on(path: Path, warnings: list[str] | None = None) -> JsonlWriter:
    sink = warnings if warnings is not None else []
    return JsonlWriter({"path": path.name}, llmrun.ComponentContext(path.parent, "t", sink.append))


def drop_errors(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return None if row["status"] == "error" else row


# -- the JSONL writer's rewrite ---------------------------------------------------------------


def test_jsonl_rewrite_keeps_unchanged_rows_byte_for_byte_and_the_old_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    rows = jsonl_rows(6, {1, 4})
    lines = [json.dumps(r) + "\n" for r in rows]  # spaced: not the writer's own shape
    lines.insert(3, "{damaged\n")
    old = "".join(lines) + '{"id": "r6", "status": "ok", "te'  # a torn last line
    out.write_text(old, encoding="utf-8")
    inode = out.stat().st_ino
    assert len(RowIndex.open(out)) == 7  # the viewer's index of it (rows and damaged lines)
    keep = tmp_path / "state" / "kept.jsonl"
    keep.parent.mkdir()
    warnings: list[str] = []
    writer = writer_on(out, warnings)

    def edit(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if row["id"] == "r2":
            return {**row, "text": "changed"}
        return drop_errors(row)

    assert writer.rewrite(edit, keep) is True
    assert keep.read_text(encoding="utf-8") == old  # the old output, torn tail and all
    new = out.read_text(encoding="utf-8").splitlines(keepends=True)
    assert new == [
        lines[0],
        llmrun.row_line({**rows[2], "text": "changed"}).decode(),  # as the writer writes
        "{damaged\n",  # not a row: copied as it was, and counted
        lines[4],
        lines[6],
    ]
    assert writer.unreadable == 1
    assert out.stat().st_ino != inode  # a new file: checkpoints and indexes see it changed
    index = RowIndex.open(out)
    assert (len(index), list(index.select("error")), list(index.select("damaged"))) == (5, [], [2])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # Every row given back as it was: nothing replaced, nothing kept.
    before = out.read_bytes()
    assert writer.rewrite(lambda row: row, tmp_path / "state" / "again.jsonl") is False
    assert out.read_bytes() == before and not (tmp_path / "state" / "again.jsonl").exists()
    assert writer_on(tmp_path / "none.jsonl").rewrite(drop_errors, tmp_path / "x") is False


def test_jsonl_rewrite_takes_a_last_row_that_lost_only_its_newline(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rows = jsonl_rows(3, {0})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows).rstrip("\n"), encoding="utf-8")
    assert writer_on(out).rewrite(drop_errors, tmp_path / "kept.jsonl")
    assert read_jsonl(out) == rows[1:]  # r2 is a whole row: kept, not called again


def test_an_edit_that_raises_leaves_the_jsonl_output_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl(out, jsonl_rows(50, {3, 30}))
    before, inode = out.read_bytes(), out.stat().st_ino
    seen = []

    def edit(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        seen.append(row["id"])
        if len(seen) == 20:
            raise RuntimeError("the edit failed")
        return drop_errors(row)

    with pytest.raises(RuntimeError, match="the edit failed"):
        writer_on(out).rewrite(edit, tmp_path / "kept.jsonl")
    assert (out.read_bytes(), out.stat().st_ino) == (before, inode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary, no copy


KILLER = """
import os, signal, sys
from pathlib import Path
import llmrun
from llmrun.builtins.writers import JsonlWriter

out, keep, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
seen = []

def edit(row):
    seen.append(row)
    if where == "edit" and len(seen) == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    return None if row["status"] == "error" else row

def replace(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # the old output is linked to keep, not replaced yet

if where == "replace":
    os.replace = replace
context = llmrun.ComponentContext(out.parent, "t")
JsonlWriter({"path": out.name}, context).rewrite(edit, keep)
"""


@pytest.mark.parametrize("where", ["edit", "replace"])
def test_a_rewrite_killed_part_way_leaves_the_old_output_and_the_next_one_completes(
    tmp_path: Path, where: str
) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(20))
    recipe = write_recipe(tmp_path, basic_recipe(FAILING, run=NO_RETRY))
    first = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    out = tmp_path / "out.jsonl"
    before = out.read_bytes()
    errors = {r["id"] for r in read_jsonl(out) if r["status"] == "error"}
    assert 0 < len(errors) < 20

    keep = RunState(out).dir / "killed.jsonl"
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLER), str(out), str(keep), where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    assert out.read_bytes() == before  # the old output, whole
    assert keep.exists() == (where == "replace")
    if keep.exists():  # linked before the kill: the old output too
        assert keep.read_bytes() == before

    retry = ("--retry-errors", "--set", "provider.error_rate=0")
    again = run_cli("run", str(recipe), *retry, "--quiet", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["resumed_ok"], summary["ok"]) == (20 - len(errors), len(errors))
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(20)]
    assert {r["status"] for r in rows} == {"ok"}
    kept = sorted(RunState(out).dir.glob("retried-*.jsonl"))
    assert kept and read_jsonl(kept[-1]) == [json.loads(x) for x in before.splitlines()]


def test_a_repost_with_no_row_to_redo_leaves_the_output_as_it_is(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    every_call_fails = {**FAILING, "error_rate": 1.0}
    recipe = write_recipe(tmp_path, basic_recipe(every_call_fails, run=NO_RETRY))
    assert run_cli("run", str(recipe), "--quiet", cwd=tmp_path).returncode == 1
    out = tmp_path / "out.jsonl"
    before, inode = out.read_bytes(), out.stat().st_ino
    done = run_cli("repost", str(recipe), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the failed calls are still errors
    assert "5 left as they were (no stored reply); the output is unchanged" in done.stderr
    assert (out.read_bytes(), out.stat().st_ino) == (before, inode)
    assert not list(RunState(out).dir.glob("before-repost-*"))


# -- a third-party writer ----------------------------------------------------------------------


class PartsWriter:
    """A third-party writer whose output is a folder of JSON parts, with ``read`` but no
    ``rewrite``."""

    options_schema: Mapping[str, Any] = {"type": "object"}

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.path = context.base_dir / str(options["path"])

    def open(self) -> Iterator[Mapping[str, Any]]:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.read()

    def read(self) -> Iterator[Mapping[str, Any]]:
        for part in sorted(self.path.glob("part-*.json"), key=lambda p: int(p.stem[5:])):
            yield from json.loads(part.read_text(encoding="utf-8"))

    def write(self, rows: Any) -> None:
        n = len(list(self.path.glob("part-*.json")))
        (self.path / f"part-{n}.json").write_text(json.dumps(list(rows)), encoding="utf-8")

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class RewritingPartsWriter(PartsWriter):
    """The same with ``rewrite``: a new folder beside the output, swapped in."""

    calls = 0

    def rewrite(self, edit: llmrun.RowEdit, keep: Path) -> bool:
        RewritingPartsWriter.calls += 1
        rows = list(self.read())
        new = [edit(row) for row in rows]
        if all(a is b for a, b in zip(rows, new, strict=True)):
            return False
        aside = self.path.with_name(f".{self.path.name}.new")
        aside.mkdir()
        kept = [row for row in new if row is not None]
        (aside / "part-0.json").write_text(json.dumps(kept), encoding="utf-8")
        self.path.rename(keep)
        aside.rename(self.path)
        return True


@hookimpl
def register_parts(register: Any) -> None:
    register("parts", PartsWriter)


@hookimpl
def register_rewriting_parts(register: Any) -> None:
    register("parts", RewritingPartsWriter)


def parts_job(tmp_path: Path, hook: Any) -> tuple[Path, Any]:
    """A run with error rows written by the ``parts`` writer, in a registry with it."""
    registry = load_registry(entry_points=False, plugins={"parts": SimpleNamespace(**hook)})
    write_jsonl(tmp_path / "data.jsonl", make_records(20))
    recipe = basic_recipe(FAILING, run=NO_RETRY, output={"writer": "parts", "path": "out.parts"})
    path = write_recipe(tmp_path, recipe)
    summary = run_recipe_sync(path, registry=registry, progress="none")
    assert summary.status == "completed" and 0 < summary.stats.error < 20
    return path, registry


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_third_party_writer_with_rewrite_is_rewritten_through_it(tmp_path: Path) -> None:
    RewritingPartsWriter.calls = 0
    path, registry = parts_job(tmp_path, {"register_writers": register_rewriting_parts})
    out = tmp_path / "out.parts"
    old = list(
        RewritingPartsWriter({"path": "out.parts"}, SimpleNamespace(base_dir=tmp_path)).read()
    )
    errors = sum(r["status"] == "error" for r in old)

    summary = run_recipe_sync(
        path,
        registry=registry,
        progress="none",
        retry_errors=True,
        overrides=["provider.error_rate=0"],
    )
    assert RewritingPartsWriter.calls == 1
    assert (summary.stats.resumed_ok, summary.stats.ok) == (20 - errors, errors)
    rows = list(PartsWriter({"path": "out.parts"}, SimpleNamespace(base_dir=tmp_path)).read())
    assert sorted(r["id"] for r in rows) == [r["id"] for r in make_records(20)]
    assert {r["status"] for r in rows} == {"ok"}
    (kept,) = RunState(out).dir.glob("retried-*.parts")
    assert list(PartsWriter({"path": str(kept)}, SimpleNamespace(base_dir=tmp_path)).read()) == old

    # repost goes through it too (each row redone: the chain is the same, the rows new).
    recipe, registry = open_recipe(path, overrides=["provider.error_rate=0"], registry=registry)
    done = repost(recipe, registry)
    assert RewritingPartsWriter.calls == 2
    assert (done.redone, done.ok, done.error) == (20, 20, 0)
    assert Path(done.previous).parent == RunState(out).dir
    assert Path(done.previous).name.startswith("before-repost-")


def test_a_third_party_writer_without_rewrite_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    path, registry = parts_job(tmp_path, {"register_writers": register_parts})
    out = tmp_path / "out.parts"
    before = folder_state(out)
    state = RunState(out)
    files = sorted(p.name for p in state.dir.iterdir())
    with pytest.raises(RecipeError, match=r"'parts' writer .* no rewrite\(\) method"):
        run_recipe_sync(path, registry=registry, progress="none", retry_errors=True)
    recipe, registry = open_recipe(path, registry=registry)
    with pytest.raises(RecipeError, match=r"'parts' writer .* no rewrite\(\) method"):
        repost(recipe, registry)
    assert folder_state(out) == before
    assert sorted(p.name for p in state.dir.iterdir()) == files
    # (A plain run still resumes it: the refusal is for rewriting alone.)
    again = run_recipe_sync(path, registry=registry, progress="none")
    assert again.stats.ok == 0 and again.stats.resumed_error > 0
