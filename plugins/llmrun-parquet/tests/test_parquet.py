"""The parquet loader and writer: on real files, and through a real llmrun run (mock provider)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llmrun_parquet
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from llmrun_parquet import ParquetLoader, ParquetWriter

import llmrun
from llmrun import ComponentContext, RecipeError
from llmrun.plugins import load_registry


def context(folder: Path, warnings: list[str] | None = None) -> ComponentContext:
    sink = warnings if warnings is not None else []
    return ComponentContext(folder, "test", sink.append)


def write_table(path: Path, n: int, row_group_size: int, **kwargs: Any) -> None:
    table = pa.table({"id": [f"r{i}" for i in range(n)], "n": list(range(n))})
    pq.write_table(table, path, row_group_size=row_group_size, **kwargs)


# -- loader --------------------------------------------------------------------------------


def test_loader_streams_every_row_group_in_order(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 25, row_group_size=10)
    loader = ParquetLoader({"path": "data.parquet", "batch_size": 3}, context(tmp_path))
    records = list(loader.records())
    assert loader.count() == 25
    assert [r.data for r in records] == [{"id": f"r{i}", "n": i} for i in range(25)]
    assert records[0].where == "data.parquet:1" and records[24].where == "data.parquet:25"


def test_loader_reads_one_batch_at_a_time(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 1000, row_group_size=1000)
    loader = ParquetLoader({"path": "data.parquet", "batch_size": 10}, context(tmp_path))
    records = loader.records()
    first = next(records)
    # The generator holds the current batch only: its frame's batch has batch_size rows.
    frame = records.gi_frame  # type: ignore[attr-defined]
    assert first.data == {"id": "r0", "n": 0}
    assert frame.f_locals["batch"].num_rows == 10
    records.close()


def test_loader_columns_and_missing_column(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 3, row_group_size=2)
    loader = ParquetLoader({"path": "data.parquet", "columns": ["n"]}, context(tmp_path))
    assert [r.data for r in loader.records()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    bad = ParquetLoader({"path": "data.parquet", "columns": ["n", "text"]}, context(tmp_path))
    with pytest.raises(RecipeError, match=r"no column 'text'; its columns: id, n"):
        list(bad.records())


def test_loader_reads_folders_and_globs(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    write_table(tmp_path / "set" / "b.parquet", 2, row_group_size=2)
    write_table(tmp_path / "set" / "a.parquet", 3, row_group_size=2)
    (tmp_path / "set" / "_ignored.parquet").write_bytes(b"not parquet")
    folder = ParquetLoader({"path": "set"}, context(tmp_path))
    assert folder.count() == 5
    assert [r.where for r in folder.records()][:4] == [
        "set/a.parquet:1",
        "set/a.parquet:2",
        "set/a.parquet:3",
        "set/b.parquet:1",
    ]
    globbed = ParquetLoader({"path": "set/b*.parquet"}, context(tmp_path))
    assert [r.data for r in globbed.records()] == [{"id": "r0", "n": 0}, {"id": "r1", "n": 1}]
    missing = ParquetLoader({"path": "nothing.parquet"}, context(tmp_path))
    assert missing.count() is None
    with pytest.raises(FileNotFoundError):
        list(missing.records())


def test_a_damaged_row_group_becomes_error_rows_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    write_table(path, 30, row_group_size=10, compression="zstd")
    chunk = pq.read_metadata(path).row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    size = chunk.total_compressed_size
    data[start + 8 : start + size - 8] = b"\xff" * (size - 16)
    path.write_bytes(bytes(data))
    records = list(ParquetLoader({"path": "data.parquet"}, context(tmp_path)).records())
    assert len(records) == 30
    bad = [r for r in records if r.data is None]
    assert [r.where for r in bad] == [f"data.parquet:{n}" for n in range(11, 21)]
    assert bad[0].error is not None and "row group 1 cannot be decoded" in bad[0].error
    assert [r.data["n"] for r in records if r.data is not None] == [*range(10), *range(20, 30)]


# -- writer --------------------------------------------------------------------------------


def rows(start: int, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "status": "ok", "n": i, **extra} for i in range(start, start + n)]


def test_writer_seals_parts_and_reads_them_back(tmp_path: Path) -> None:
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 4}, context(tmp_path))
    assert list(writer.open()) == []
    writer.write(rows(0, 3))
    writer.write(rows(3, 3))  # 6 >= 4: sealed as part 0
    writer.write(rows(6, 1))
    writer.close()  # the last row becomes part 1
    folder = tmp_path / "out.parquet"
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(folder).to_pylist() == rows(0, 7)
    again = ParquetWriter({"path": "out.parquet"}, context(tmp_path))
    assert list(again.open()) == [{"id": f"r{i}", "status": "ok"} for i in range(7)]
    again.close()


def test_writer_keeps_one_schema_across_parts(tmp_path: Path) -> None:
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 1}, context(tmp_path))
    writer.open()
    writer.write([{"id": "a", "cost": None, "fields": {"label": "x"}}])
    writer.write([{"id": "b", "cost": 2}])
    writer.write([{"id": "c", "cost": 0.5, "extra": True}])
    writer.write([{"id": "d", "cost": "n/a", "fields": [1, 2]}])
    writer.close()
    folder = tmp_path / "out.parquet"
    schemas = {str(pq.read_schema(p)) for p in folder.glob("part-*.parquet")}
    assert len(schemas) == 1  # every reader takes one file's schema for all
    table = pq.read_table(folder)
    assert table.schema.field("cost").type == pa.string()
    assert table.to_pylist() == [
        {"id": "a", "cost": None, "fields": '{"label": "x"}', "extra": None},
        {"id": "b", "cost": "2", "fields": None, "extra": None},
        {"id": "c", "cost": "0.5", "fields": None, "extra": True},
        {"id": "d", "cost": "n/a", "fields": "[1.0, 2.0]", "extra": None},
    ]


def test_vectors_are_lists_of_floats(tmp_path: Path) -> None:
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 2}, context(tmp_path))
    writer.open()
    writer.write([{"id": "a", "vector": [0.25, -1, 3e-7]}, {"id": "b", "vector": None}])
    writer.write([{"id": "c", "vector": [2, 0]}, {"id": "d", "tags": ["x", "y"], "vector": []}])
    writer.close()
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float64())
    assert table.schema.field("tags").type == pa.string()  # not numbers: JSON text
    assert [r["vector"] for r in table.to_pylist()] == [[0.25, -1.0, 3e-7], None, [2.0, 0.0], []]


def test_export_of_embeddings_through_the_cli(tmp_path: Path) -> None:
    rows = [
        {"id": f"p{i}", "status": "ok", "response": {"vector": [i / 4, -i, 0.5]}} for i in range(4)
    ]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    llmrun_cli = Path(sys.executable).with_name("llmrun")
    proc = subprocess.run(
        [str(llmrun_cli), "export", "out.jsonl", "--to", "parquet", "--fields", "id,response"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "LLMRUN_PLUGINS"},
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("response.vector").type == pa.list_(pa.float64())
    assert table.column("response.vector").to_pylist() == [[i / 4, -i, 0.5] for i in range(4)]


def test_writer_used_like_export_without_reading_open(tmp_path: Path) -> None:
    writer = ParquetWriter({"path": str(tmp_path / "flat.parquet")}, context(Path("/")))
    writer.open()  # not iterated: setting up must not depend on it
    writer.write([{"id": "1", "fields.label": "pos", "record.text": "good"}])
    writer.sync()
    writer.close()
    assert pq.read_table(tmp_path / "flat.parquet").to_pylist() == [
        {"id": "1", "fields.label": "pos", "record.text": "good"}
    ]


def test_writer_refuses_a_file_path(tmp_path: Path) -> None:
    (tmp_path / "out.parquet").write_bytes(b"PAR1")
    writer = ParquetWriter({"path": "out.parquet"}, context(tmp_path))
    with pytest.raises(RecipeError, match="is a file; the parquet writer writes a folder"):
        writer.open()


def test_writer_refuses_a_folder_shipped_with_links(tmp_path: Path) -> None:
    # A journal name linked elsewhere: rows were appended to that file and its lines read in.
    victim = tmp_path / "profile.sh"
    victim.write_text("export SAFE=1\n", encoding="utf-8")
    folder = tmp_path / "job" / "out.parquet"
    folder.mkdir(parents=True)
    (folder / "_pending-00000.jsonl").symlink_to(victim)
    writer = ParquetWriter({"path": "out.parquet"}, context(tmp_path / "job"))
    with pytest.raises(RecipeError, match=r"_pending-00000\.jsonl is a symbolic link"):
        writer.open()
    assert victim.read_text(encoding="utf-8") == "export SAFE=1\n"
    assert (folder / "_pending-00000.jsonl").is_symlink()  # nothing sealed or removed


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from llmrun import ComponentContext
    from llmrun_parquet import ParquetWriter

    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 10},
                           ComponentContext(Path(sys.argv[1]), "crash"))
    list(writer.open())
    for i in range(25):
        writer.write([{"id": f"r{i}", "status": "ok", "n": i}])
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_rows_written_before_a_kill_9_are_all_there(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    folder = tmp_path / "out.parquet"
    assert (folder / "_pending-00002.jsonl").exists()  # 2 parts sealed, 5 rows journalled
    with open(folder / "_pending-00002.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "r25", "sta')  # and a torn line, as a crash mid-write leaves
    warnings: list[str] = []
    writer = ParquetWriter({"path": "out.parquet"}, context(tmp_path, warnings))
    assert [r["id"] for r in writer.open()] == [f"r{i}" for i in range(25)]
    writer.write(rows(25, 1))
    writer.close()
    assert [r["n"] for r in pq.read_table(folder).to_pylist()] == list(range(26))
    assert "torn line" in warnings[0]
    assert (folder / "_pending-00002.torn.txt").read_text() == '{"id": "r25", "sta'


def test_a_journal_whose_part_exists_is_not_read_twice(tmp_path: Path) -> None:
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 2}, context(tmp_path))
    writer.open()
    writer.write(rows(0, 2))
    writer.close()
    folder = tmp_path / "out.parquet"
    # A crash between sealing part 0 and deleting its journal leaves both.
    (folder / "_pending-00000.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows(0, 2)), encoding="utf-8"
    )
    again = ParquetWriter({"path": "out.parquet"}, context(tmp_path))
    assert [r["id"] for r in again.open()] == ["r0", "r1"]
    again.close()
    assert not (folder / "_pending-00000.jsonl").exists()


# -- rewrite (llmrun run --retry-errors, llmrun repost) -----------------------------------------


def crashed_output(tmp_path: Path) -> Path:
    """out.parquet as a killed writer leaves it: r0..r19 in two parts, r20..r24 in a journal,
    then a torn line."""
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    folder = tmp_path / "out.parquet"
    with open(folder / "_pending-00002.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "r25", "sta')
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def ids_in(folder: Path) -> list[str]:
    return [r["id"] for r in ParquetWriter({"path": str(folder)}, context(folder)).read()]


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


OLD = [f"r{i}" for i in range(25)]
NEW = [f"r{i}" for i in range(25) if i % 5]  # what the edits below keep


def test_rewrite_swaps_in_a_new_folder_and_keeps_the_old_one_whole(tmp_path: Path) -> None:
    folder = crashed_output(tmp_path)
    before = snapshot(folder)
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 8}, context(tmp_path))
    keep = tmp_path / "out.parquet.llmrun" / "retried-1.parquet"

    def edit(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if row["n"] % 5 == 0:
            return None
        if row["id"] == "r7":
            return {**row, "status": "error", "error": {"type": "x"}, "steps": {"a": {"n": 1}}}
        return row

    assert writer.rewrite(edit, keep) is True
    assert snapshot(keep) == before  # the old folder: its journal and torn line too
    assert sorted(p.name for p in folder.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    new = list(writer.read())
    assert [r["id"] for r in new] == NEW  # the journal's whole rows, not the torn one
    r7 = next(r for r in new if r["id"] == "r7")
    assert (r7["status"], r7["error"], r7["steps"]) == ("error", {"type": "x"}, {"a": {"n": 1}})
    assert hidden(tmp_path) == []

    # Every row given back as it was: nothing replaced, nothing kept.
    state = snapshot(folder)
    assert writer.rewrite(lambda row: row, tmp_path / "again.parquet") is False
    assert snapshot(folder) == state and not (tmp_path / "again.parquet").exists()
    assert hidden(tmp_path) == []
    missing = ParquetWriter({"path": "none.parquet"}, context(tmp_path))
    assert missing.rewrite(edit, tmp_path / "x") is False

    # A run goes on after it: new parts follow the rewritten ones.
    assert [r["id"] for r in writer.open()] == NEW
    writer.write(rows(25, 1))
    writer.close()
    assert [r["id"] for r in pq.read_table(folder).to_pylist()] == [*NEW, "r25"]


def test_an_edit_that_raises_leaves_the_parquet_output_as_it_was(tmp_path: Path) -> None:
    folder = crashed_output(tmp_path)
    before = snapshot(folder)
    seen: list[str] = []

    def edit(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        seen.append(row["id"])
        if len(seen) == 12:  # past the first part of the folder being built
            raise RuntimeError("the edit failed")
        return None if row["n"] % 5 == 0 else row

    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 4}, context(tmp_path))
    keep = tmp_path / "kept.parquet"
    with pytest.raises(RuntimeError, match="the edit failed"):
        writer.rewrite(edit, keep)
    assert snapshot(folder) == before and not keep.exists() and hidden(tmp_path) == []


KILLED_REWRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from llmrun import ComponentContext
    from llmrun_parquet import ParquetWriter

    folder, kill_after = Path(sys.argv[1]), int(sys.argv[2])
    renames, seen = [], []
    rename = Path.rename

    def renaming(self, target):
        done = rename(self, target)
        renames.append(target)
        if len(renames) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    def edit(row):
        seen.append(row)
        if not kill_after and len(seen) == 12:
            os.kill(os.getpid(), signal.SIGKILL)
        return None if row["n"] % 5 == 0 else row

    Path.rename = renaming
    writer = ParquetWriter({"path": "out.parquet", "row_group_size": 4},
                           ComponentContext(folder, "kill"))
    writer.rewrite(edit, folder / "out.parquet.llmrun" / "kept.parquet")
    """
)


# Killed while the new folder is written, once it is whole, and once the old one is kept.
@pytest.mark.parametrize("renames", [0, 1, 2])
def test_a_rewrite_killed_at_any_step_leaves_one_whole_output(tmp_path: Path, renames: int) -> None:
    folder = crashed_output(tmp_path)
    before = snapshot(folder)
    command = [sys.executable, "-c", KILLED_REWRITE, str(tmp_path), str(renames)]
    assert subprocess.run(command, check=False).returncode == -signal.SIGKILL
    assert hidden(tmp_path)  # what the rewrite had built aside
    expected = NEW if renames == 2 else OLD  # once the old output is kept, the new one is whole
    writer = ParquetWriter({"path": "out.parquet"}, context(tmp_path))
    assert [r["id"] for r in writer.read()] == expected  # read-only: nothing settled yet
    assert [r["id"] for r in writer.open()] == expected  # open ends or undoes the rewrite
    writer.close()
    assert hidden(tmp_path) == []
    kept = tmp_path / "out.parquet.llmrun" / "kept.parquet"
    assert kept.exists() == (renames == 2)
    if renames == 2:
        assert snapshot(kept) == before
    else:
        assert ids_in(folder) == OLD and "_pending-00002.torn.txt" in snapshot(folder)


# -- through llmrun ------------------------------------------------------------------------


def recipe(tmp_path: Path, **output: Any) -> Path:
    text = textwrap.dedent(
        f"""\
        name: parquet-roundtrip
        data:
          loader: parquet
          path: data.parquet
          id: id
          columns: [id, n]
        prompt: "Number {{{{ n }}}}"
        provider: {{name: mock, replies: [pos, neg]}}
        output:
          writer: parquet
          path: out.parquet
          {json.dumps(output)[1:-1] if output else ""}
        """
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_run_reads_and_writes_parquet_and_resumes(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 30, row_group_size=7)
    registry = load_registry(entry_points=False, plugins={"parquet": llmrun_parquet})
    path = recipe(tmp_path, row_group_size=8)
    summary = llmrun.run_recipe_sync(path, registry=registry, limit=20)
    assert (summary.stats.ok, summary.stats.error) == (20, 0)
    summary = llmrun.run_recipe_sync(path, registry=registry)
    assert (summary.stats.resumed_ok, summary.stats.ok) == (20, 10)
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert sorted(r["id"] for r in out) == sorted(f"r{i}" for i in range(30))
    assert {r["status"] for r in out} == {"ok"} and {r["text"] for r in out} <= {"pos", "neg"}
    assert json.loads(out[0]["record"]) == {"id": out[0]["id"], "n": int(out[0]["id"][1:])}


STEPS_RECIPE = """\
name: steps-roundtrip
data: {loader: parquet, path: data.parquet, id: id}
provider: {name: mock, replies: [pos, neg, dunno]}
run: {max_retries: 0}
steps:
  - name: draft
    prompt: "Number {{ n }}"
  - name: judge
    prompt: "Judge {{ steps.draft.text }}"
    postprocess: [{choices: {labels: [pos, neg]CHOICES}}]
output: {writer: parquet, path: out.parquet, row_group_size: 8}
"""


def test_retry_errors_on_a_steps_recipe_calls_only_the_failed_step(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 30, row_group_size=7)
    path = tmp_path / "recipe.yaml"
    path.write_text(STEPS_RECIPE.replace("CHOICES", ""), encoding="utf-8")
    registry = load_registry(entry_points=False, plugins={"parquet": llmrun_parquet})
    first = llmrun.run_recipe_sync(path, registry=registry)
    before = {r["id"]: r for r in ParquetWriter({"path": "out.parquet"}, context(tmp_path)).read()}
    judged = {i for i, r in before.items() if r["status"] == "error"}
    assert first.stats.error == len(judged) > 0  # "dunno" from the judge: its chain fails
    assert all(before[i]["steps"]["draft"]["status"] == "ok" for i in judged)

    path.write_text(STEPS_RECIPE.replace("CHOICES", ", aliases: {dunno: neg}"), encoding="utf-8")
    again = llmrun.run_recipe_sync(path, registry=registry, retry_errors=True)
    assert (again.stats.resumed_ok, again.stats.ok, again.stats.error) == (
        30 - len(judged),
        len(judged),
        0,
    )
    after = {r["id"]: r for r in ParquetWriter({"path": "out.parquet"}, context(tmp_path)).read()}
    assert sorted(after) == sorted(before)
    for i in judged:  # the draft was read back from the dropped row, not called again
        assert after[i]["steps"]["draft"] == before[i]["steps"]["draft"]
        assert after[i]["steps"]["judge"]["fields"] == {"label": "neg"}


def test_a_bad_option_is_located_in_the_recipe(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 1, row_group_size=1)
    path = recipe(tmp_path, compression="lz5")
    registry = load_registry(entry_points=False, plugins={"parquet": llmrun_parquet})
    with pytest.raises(RecipeError) as caught:
        llmrun.load_recipe(path, registry)
    assert "recipe.yaml:12" in str(caught.value) and "output.compression" in str(caught.value)


@pytest.fixture(autouse=True)
def _no_site_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the plugin under test, whatever else the environment has installed.
    monkeypatch.setenv("LLMRUN_PLUGINS", "")


KILLED_RECIPE = """\
name: killed
data: {loader: parquet, path: data.parquet, id: id}
prompt: "Number {{ n }}"
provider: {name: mock, latency_s: 0.05}  # >= 1.5 s in all: time to kill it midway
run: {concurrency: 2}
output: {writer: parquet, path: out.parquet, row_group_size: 10}
"""


def test_a_run_killed_with_sigkill_resumes_with_every_row_once(tmp_path: Path) -> None:
    write_table(tmp_path / "data.parquet", 60, row_group_size=16)
    (tmp_path / "recipe.yaml").write_text(KILLED_RECIPE, encoding="utf-8")
    command = [sys.executable, "-m", "llmrun", "run", str(tmp_path / "recipe.yaml"), "--quiet"]
    env = {**os.environ, "LLMRUN_PLUGINS": "parquet"}  # the installed entry point, as a user
    folder = tmp_path / "out.parquet"
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            journals = list(folder.glob("_pending-*.jsonl")) if folder.exists() else []
            # Killed with a part sealed and a journal at most half full: its seal (and the
            # journal's removal) is then 5 rows, 125 ms, away. Killed just before a seal, a
            # loaded machine let the writer seal and remove the journal first (seen once).
            if list(folder.glob("part-*.parquet")) and any(
                0 < j.read_bytes().count(b"\n") <= 5 for j in journals
            ):
                break
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no drain, no close, no seal
    finally:
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, stderr
    assert list(folder.glob("_pending-*.jsonl"))  # the kill left a journal to seal
    again = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed_ok"] >= 10 and summary["resumed_ok"] + summary["ok"] == 60
    ids = [r["id"] for r in pq.read_table(folder, columns=["id"]).to_pylist()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(60))  # each exactly once
