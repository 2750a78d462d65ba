"""Resume at scale (issue 14): what resume reads fast must read exactly what a full parse reads.

- The JSONL writer indexes a row of its own shape from the line's two ends (``open_ids``); any
  other line is parsed whole. ``index_writer`` must give the same ids, counts and spend as
  parsing every line (``index_output``), on every kind of line an output can hold.
- The JSONL loader tells a line's id without parsing it (``ids_first``) only when that is
  certain; a done record is then skipped unparsed. The real ``llmrun run`` must call and write
  exactly what it does with that path off (a ``data.filter`` turns it off).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmrun.builtins.writers import JsonlWriter
from llmrun.job.checkpoint import Frontier, every_s
from llmrun.job.idfiles import serial
from llmrun.job.stats import RunStats
from llmrun.job.store import index_output, index_writer
from llmrun.jsonio import loads, row_line
from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.values import ComponentContext

from .conftest import basic_recipe, read_jsonl, run_cli, write_jsonl, write_recipe

MOCK = {"name": "mock"}
# Ids a resume must find again however they are written: quotes, backslashes, non-ASCII,
# a lone surrogate (written as an escape), control characters, look-alikes of the row's keys.
ODD_IDS = [
    'say "hi"',
    "back\\slash",
    "ünïcödé",
    "emoji 🎉",
    "tab\there",
    "lone \ud800 surrogate",
    '","status":"error',
    "",
    "7",
]


def writer_at(path: Path) -> JsonlWriter:
    return JsonlWriter({"path": path.name}, ComponentContext(path.parent, "t", lambda _m: None))


def row(rid: Any, status: str = "ok", cost: Any = 0.25, **extra: Any) -> dict[str, Any]:
    """A row with the keys and order job.rows.RowMaker writes."""
    return {
        "id": rid,
        "status": status,
        "text": "a reply",
        "fields": {"id": "nested", "status": "error", "cost_usd": 99},
        "error": None if status == "ok" else {"type": "http_500", "message": "x"},
        "response": None,
        "record": extra.pop("record", {"id": "shadow", "cost_usd": 1e9}),
        "attempts": 1,
        "latency_s": 0.01,
        "cost_usd": cost,
        "cached": False,
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
        "recipe_hash": "0123456789abcdef",
        **extra,
    }


def hostile_output(path: Path, nonfinite: bool) -> list[str]:
    """An output holding every kind of line, and the ids a lookup should be tried with."""
    lines: list[bytes] = []
    for i, rid in enumerate(ODD_IDS):
        lines.append(row_line(row(rid, "error" if i % 3 == 0 else "ok", cost=i / 7)))
    lines += [
        row_line(row("plain-ok", cost=0.1)),
        row_line(row("plain-null", cost=None)),
        row_line(row("plain-error", "error", cost=0.2)),
        row_line(row("dup", cost=0.3)),
        row_line(row("dup", "error", cost=0.3)),  # a duplicate: two rows, one id
        row_line(row("int-cost", cost=3)),
        row_line(row("big-cost", cost=1e300)),
        row_line(row("bool-cost", cost=True)),  # counted as json reads it: True is 1
        row_line(row("neg", cost=-0.5)),
        row_line(row(42, cost=0.01)),  # a non-string id: str(42) is its id
        # Another writer's spelling: spaces, the id not first, keys in another order.
        (json.dumps({"status": "ok", "id": "not-first", "cost_usd": 0.5}) + "\n").encode(),
        (json.dumps(row("spaced", cost=0.7)) + "\n").encode(),
        # This writer's head and tail with cost tokens it never writes: parsed whole.
        b'{"id":"underscore","status":"ok","cost_usd":1_0,"cached":false,"started_at":"a",'
        b'"finished_at":"b","recipe_hash":"c"}\n',
        b'{"id":"inf","status":"ok","cost_usd":Infinity,"cached":false,"started_at":"a",'
        b'"finished_at":"b","recipe_hash":"c"}\n'
        if nonfinite
        else b"",
        b'{"id":"nan","status":"ok","cost_usd":NaN,"cached":false,"started_at":"a",'
        b'"finished_at":"b","recipe_hash":"c"}\n'
        if nonfinite
        else b"",
        # A status this writer never writes: parsed whole (counted as an error, as before).
        b'{"id":"odd-status","status":"maybe","cost_usd":0.5,"cached":false,'
        b'"started_at":"a","finished_at":"b","recipe_hash":"c"}\n',
        # Damaged lines: skipped, their records run again.
        b'{"id":"broken", "status": "ok", \n',
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"no_id": true}\n',
        b"\n",
        b'{"id":"bad-utf8 \xff","status":"ok","cost_usd":null}\n',
        # A huge row (8 MiB of text, past one read block).
        row_line(row("huge", cost=0.9, record={"text": "x" * (8 << 20)})),
    ]
    path.write_bytes(b"".join(lines))
    return [
        *ODD_IDS,
        "plain-ok",
        "plain-null",
        "plain-error",
        "dup",
        "int-cost",
        "big-cost",
        "bool-cost",
        "neg",
        "42",
        "not-first",
        "spaced",
        "underscore",
        "inf",
        "nan",
        "odd-status",
        "broken",
        "no_id",
        "huge",
        "nested",
        "shadow",
        "bad-utf8 \ufffd",
        "never-written",
    ]


def parsed_rows(path: Path) -> list[dict[str, Any]]:
    """Every line parsed whole, kept as the writer's open() keeps it (before open_ids)."""
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            value = loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "id" in value:
            rows.append(value)
    return rows


@pytest.mark.parametrize("nonfinite", [False, True])
def test_the_fast_index_reads_what_a_full_parse_reads(tmp_path: Path, nonfinite: bool) -> None:
    out = tmp_path / "out.jsonl"
    candidates = hostile_output(out, nonfinite)
    slow_stats = RunStats()
    slow = index_output(parsed_rows(out), slow_stats)
    fast_stats = RunStats()
    writer = writer_at(out)
    fast = index_writer(writer, fast_stats)
    writer.close()
    assert (fast_stats.resumed_ok, fast_stats.resumed_error) == (
        slow_stats.resumed_ok,
        slow_stats.resumed_error,
    )
    # The same float, summed in the same order (NaN from a NaN cost: repr compares it).
    assert repr(fast_stats.resumed_cost_usd) == repr(slow_stats.resumed_cost_usd)
    assert nonfinite or fast_stats.resumed_cost_usd > 1e299
    assert len(fast) == len(slow)
    for rid in candidates:
        assert (rid in fast) == (rid in slow), rid
    # What the test means: the odd ids, the other writer's rows and the duplicate are found;
    # the damaged lines, the nested ids and ids never written are not.
    found = [*ODD_IDS, "not-first", "spaced", "dup", "42", "huge", "neg"]
    assert all(rid in fast for rid in found)
    assert not any(rid in fast for rid in ["broken", "nested", "shadow", "never-written"])
    assert slow_stats.resumed_ok + slow_stats.resumed_error == len(parsed_rows(out))


def test_a_torn_last_line_is_moved_aside_and_its_record_runs_again(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"id": f"r{i}", "text": f"t{i}"} for i in range(6)])
    recipe = write_recipe(tmp_path, basic_recipe(MOCK))
    first = run_cli("run", str(recipe), "--quiet", "--limit", "4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out.jsonl"
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    # A kill mid-write: the last row cut in the middle, no newline.
    out.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    torn_id = json.loads(lines[3])["id"]
    again = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["resumed_ok"], summary["ok"]) == (3, 3)
    assert "torn line" in again.stderr
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == [f"r{i}" for i in range(6)]
    assert [r["id"] for r in rows].count(torn_id) == 1
    assert list((tmp_path / "out.jsonl.llmrun").glob("torn-*.txt"))


def test_odd_ids_are_found_again_and_nothing_is_called_twice(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    records = [{"id": rid, "text": f"text {n}"} for n, rid in enumerate(ODD_IDS) if rid]
    records += [{"id": n, "text": f"int {n}"} for n in (0, 7, 12345678901234)]
    records += [{"id": f"r{n}", "text": f"more {n}"} for n in range(20)]
    provider = {"name": "openai", "base_url": fake_openai.url, "model": "m"}
    recipe = write_recipe(tmp_path, basic_recipe(provider, prompt="{{ text }}"))
    half = len(records) // 2
    write_jsonl(tmp_path / "data.jsonl", records[:half])
    first = run_cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    write_jsonl(tmp_path / "data.jsonl", records)  # new records at the end
    second = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["resumed_ok"], summary["ok"]) == (half, len(records) - half)
    noop = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    assert json.loads(noop.stdout)["ok"] == 0
    texts = [m["content"] for r in fake_openai.requests for m in r.body["messages"]]
    assert sorted(t for t in texts if t.startswith(("text", "int", "more"))) == sorted(
        r["text"] for r in records
    )
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted(str(r["id"]) for r in records)


TRAPS = [
    '{"id": "a", "text": "dup key", "id": "b"}',  # read as "b" (the last one), as orjson does
    '{"\\u0069d": "c", "text": "escaped key"}',  # the key "id", spelled with an escape
    '{"text": "id not first", "id": "d"}',
    '{"id": "e", "text": "broken',  # invalid JSON, id not done: an error row
    '{"id": "f", "text": "trailing"} junk',  # invalid JSON whose id is done: still an error
    "\u00a0",  # a blank line to Python (not to bytes.isspace): skipped
    '{"id": "g", "text": "bad byte \xff"}',
    '{"id": 5, "text": "number id"}',
    '{"id": 05, "text": "not JSON"}',
    '  {  "id"  :  "h"  ,  "text": "spaced"  }  ',
    '{"id": "i", "text": "a value that is \\"id\\" and \\u00e9"}',
    '{"id": "", "text": "empty id"}',
    '{"id": "j", "text": "ok"}',
    '{"id": "k", "text": "ok"}',
]


def write_traps(path: Path) -> None:
    with open(path, "wb") as fh:
        for line in TRAPS:
            fh.write(line.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
            fh.write(b"\n")


@pytest.mark.parametrize("done", [["a", "c", "d", "f", "g", "5", "h", "i", "j"], ["b", "e", "k"]])
def test_skipping_unparsed_records_changes_nothing(tmp_path: Path, done: list[str]) -> None:
    """The same input and output, resumed with the fast path and without it (a filter that
    keeps every record turns it off): the same records run, the same rows are written."""
    results = []
    for name, extra in (("fast", {}), ("full", {"filter": "true"})):
        folder = tmp_path / name
        folder.mkdir()
        write_traps(folder / "data.jsonl")
        rows = b"".join(row_line(row(rid)) for rid in done)
        (folder / "out.jsonl").write_bytes(rows)
        data = {"path": "data.jsonl", "id": "id", **extra}
        recipe = write_recipe(folder, basic_recipe(MOCK, prompt="{{ text }}", data=data))
        result = run_cli("run", str(recipe), "--quiet", "--json", cwd=folder)
        assert result.returncode in (0, 1), result.stderr
        summary = json.loads(result.stdout)
        new = read_jsonl(folder / "out.jsonl")[len(done) :]
        results.append(
            (
                summary["resumed_ok"],
                summary["ok"],
                summary["error"],
                sorted((r["id"], r["status"], (r["error"] or {}).get("type")) for r in new),
            )
        )
    assert results[0] == results[1]
    # What the test means: the duplicate key is read as its last value, the escaped key and
    # the id that is not first are found by the full parse, and invalid lines are error rows.
    written = {r[0] for r in results[0][3]}
    assert ("b" in written) == ("b" not in done)
    assert ("a" in written) is False  # no record has the id "a"
    assert all(rid not in written for rid in done)


def test_error_rows_are_counted_apart_and_retry_errors_runs_them_again(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"id": f"r{i}", "text": f"t{i}"} for i in range(10)])
    rows = [row(f"r{i}", "error" if i in (2, 5) else "ok", cost=0.5) for i in range(8)]
    (tmp_path / "out.jsonl").write_bytes(b"".join(row_line(r) for r in rows))
    recipe = write_recipe(tmp_path, basic_recipe(MOCK))
    resumed = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    summary = json.loads(resumed.stdout)
    assert (summary["resumed_ok"], summary["resumed_error"], summary["ok"]) == (6, 2, 2)
    assert summary["job_cost_usd"] == pytest.approx(4.0 + summary["cost_usd"])
    retried = run_cli("run", str(recipe), "--quiet", "--json", "--retry-errors", cwd=tmp_path)
    summary = json.loads(retried.stdout)
    assert (summary["resumed_ok"], summary["resumed_error"], summary["ok"]) == (8, 0, 2)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in out) == sorted(f"r{i}" for i in range(10))
    assert all(r["status"] == "ok" for r in out)


def test_other_writers_resume_through_their_whole_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"id": f"r{i}", "text": f"t{i}"} for i in range(5)])
    recipe = write_recipe(tmp_path, basic_recipe(MOCK, output={"path": "out.csv", "writer": "csv"}))
    first = run_cli("run", str(recipe), "--quiet", "--limit", "3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli("run", str(recipe), "--quiet", "--json", cwd=tmp_path)
    summary = json.loads(again.stdout)
    assert (summary["resumed_ok"], summary["ok"]) == (3, 2)
    assert (tmp_path / "out.csv").read_text().count("\n") == 1 + 5


# -- the resume checkpoint (job/checkpoint.py) ------------------------------------------------


def checkpoint_job(folder: Path, n: int) -> Path:
    write_jsonl(folder / "data.jsonl", [{"id": f"r{i}", "text": f"t{i}"} for i in range(n)])
    return write_recipe(folder, basic_recipe(MOCK))


def append_records(folder: Path, start: int, stop: int) -> None:
    with open(folder / "data.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(start, stop)
        )


def summary_of(recipe: Path, *args: str) -> dict[str, Any]:
    result = run_cli("run", str(recipe), "--quiet", "--json", *args, cwd=recipe.parent)
    assert result.returncode in (0, 1), result.stderr  # 1: the output holds error rows
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def checkpoint_path(folder: Path) -> Path:
    return folder / "out.jsonl.llmrun" / "resume.idx"


def ids_files(folder: Path) -> list[Path]:
    """The checkpoint's files of ids (job/idfiles.py)."""
    return sorted((folder / "out.jsonl.llmrun").glob("resume-*.ids"))


def assert_one_row_each(folder: Path, n: int) -> None:
    ids = [r["id"] for r in read_jsonl(folder / "out.jsonl")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))


def tamper_counts(folder: Path, ok: int) -> None:
    """Change the checkpoint's count of ok rows (its header line), so a run shows whether it
    took its counts from the checkpoint."""
    path = checkpoint_path(folder)
    head, rest = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header["ok"] = ok
    path.write_bytes(json.dumps(header).encode() + b"\n" + rest)


def test_a_completed_run_leaves_a_checkpoint_the_next_run_trusts(tmp_path: Path) -> None:
    recipe = checkpoint_job(tmp_path, 30)
    assert summary_of(recipe)["ok"] == 30
    assert checkpoint_path(tmp_path).exists()
    append_records(tmp_path, 30, 40)  # new records at the end of the same file
    summary = summary_of(recipe)
    assert (summary["resumed_ok"], summary["ok"], summary["total"]) == (30, 10, 40)
    assert_one_row_each(tmp_path, 40)
    # The counts of the rows before it come from the checkpoint (changed here to show it).
    tamper_counts(tmp_path, 1000)
    assert summary_of(recipe)["resumed_ok"] == 1000
    noop = summary_of(recipe)  # the run above saved a checkpoint again, from its counts
    assert (noop["ok"], noop["total"]) == (0, 40)


def test_rows_written_after_the_checkpoint_are_read_and_counted(tmp_path: Path) -> None:
    """As after a run killed past the checkpoint: its rows are in the output, not in the
    checkpoint, and their records must not run again."""
    recipe = checkpoint_job(tmp_path, 20)
    summary_of(recipe)
    append_records(tmp_path, 20, 30)
    rows = [row(f"r{i}", "error" if i == 21 else "ok", cost=0.5) for i in range(20, 25)]
    with open(tmp_path / "out.jsonl", "ab") as fh:
        fh.write(b"".join(row_line(r) for r in rows))
        fh.write(b'{"id":"r25","status":"ok","te')  # and a torn last line
    summary = summary_of(recipe)
    assert (summary["resumed_ok"], summary["resumed_error"], summary["ok"]) == (24, 1, 5)
    assert_one_row_each(tmp_path, 30)


@pytest.mark.parametrize(
    "change",
    [
        "output byte",
        "input id",
        "retry errors",
        "input replaced",
        "checkpoint byte",
        "ids byte",
        "ids file gone",
        # A state folder may come with a shared output: layer sizes past the file are refused
        # before anything is read (a read of 8 TB, then of 16 PB, ended the run with a
        # MemoryError), and a file of ids is one of the folder's, by a name it gave it.
        "layer table past the file",
        "layer ids past the file",
        "layer file elsewhere",
    ],
)
def test_a_checkpoint_that_no_longer_holds_is_not_used(tmp_path: Path, change: str) -> None:
    recipe = checkpoint_job(tmp_path, 20)
    summary_of(recipe)
    tamper_counts(tmp_path, 1000)  # shows whether the next run used it
    args: tuple[str, ...] = ()
    if change == "output byte":  # edited in place: same file, same size
        out = tmp_path / "out.jsonl"
        with open(out, "r+b") as fh:
            fh.seek(10)
            byte = fh.read(1)
            fh.seek(10)
            fh.write(b"9" if byte != b"9" else b"8")
    elif change == "input id":  # a record before the checkpoint's end now has a new id
        data = tmp_path / "data.jsonl"
        with open(data, "r+b") as fh:
            content = fh.read()
            fh.seek(0)
            fh.write(content.replace(b'"r3"', b'"x3"', 1))
    elif change == "retry errors":  # the output is replaced (the same rows here)
        args = ("--retry-errors",)
        with open(tmp_path / "out.jsonl", "ab") as fh:
            fh.write(row_line(row("r-extra", "error")))
    elif change == "checkpoint byte":  # the checkpoint's head damaged on disk
        path = checkpoint_path(tmp_path)
        damaged = bytearray(path.read_bytes())
        damaged[-5] ^= 0xFF
        path.write_bytes(bytes(damaged))
    elif change == "ids byte":  # a file of ids damaged on disk: the last id's last byte
        (path,) = ids_files(tmp_path)
        damaged = bytearray(path.read_bytes())
        damaged[-1] ^= 0xFF
        path.write_bytes(bytes(damaged))
    elif change == "ids file gone":
        (path,) = ids_files(tmp_path)
        path.unlink()
    elif change.startswith("layer"):
        path = checkpoint_path(tmp_path)
        header = json.loads(path.read_bytes())
        name, n, bits, table_crc, digests_crc = header["files"][0]
        if change == "layer table past the file":
            header["files"][0] = [name, n, 40, table_crc, digests_crc]
        elif change == "layer ids past the file":
            header["files"][0] = [name, 10**15, bits, table_crc, digests_crc]
        else:  # the output itself, or a file of ids of another job's state folder
            header["files"][0] = ["../out.jsonl", n, bits, table_crc, digests_crc]
        path.write_bytes(json.dumps(header).encode() + b"\n")
    else:  # another file under the same name: the same records in another order
        data = tmp_path / "data.jsonl"
        lines = data.read_bytes().splitlines(keepends=True)
        data.unlink()
        data.write_bytes(b"".join(reversed(lines)))
    summary = summary_of(recipe, *args)
    assert summary["resumed_ok"] != 1000
    if change == "input id":
        assert summary["ok"] == 1  # x3 runs
    elif change == "output byte":
        assert summary["resumed_ok"] + summary["ok"] >= 20
    else:
        assert (summary["resumed_ok"], summary["ok"]) == (20, 0)


def summary_with_a_small_index(recipe: Path, *args: str) -> dict[str, Any]:
    """``summary_of`` through the CLI's own main in a subprocess, with the ids an output is
    indexed into memory at start cut from 2**20 to 40 (checkpoint.INDEX_IN_MEMORY): past
    that, files of ids."""
    script = recipe.parent / "small_index.py"
    script.write_text(
        "import sys\n"
        "import llmrun.job.checkpoint as checkpoint\n"
        "checkpoint.INDEX_IN_MEMORY = 40\n"
        "from llmrun.commands.main import main\n"
        "sys.exit(main())\n",
        encoding="utf-8",
    )
    argv = [sys.executable, str(script), "run", str(recipe), "--quiet", "--json", *args]
    result = subprocess.run(argv, cwd=recipe.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_an_output_indexed_into_files_of_ids_resumes_exactly_and_leaves_them_named(
    tmp_path: Path,
) -> None:
    recipe = checkpoint_job(tmp_path, 300)
    assert summary_of(recipe)["ok"] == 300
    for path in [checkpoint_path(tmp_path), *ids_files(tmp_path)]:
        path.unlink()  # an output without a checkpoint (an older llmrun, a shared file)
    append_records(tmp_path, 300, 350)
    # A run that may not leave a checkpoint (a limit counts records) maps the files, then
    # deletes them: nothing is left that no checkpoint names.
    limited = summary_with_a_small_index(recipe, "--limit", "310")
    assert (limited["resumed_ok"], limited["ok"]) == (300, 10)
    assert ids_files(tmp_path) == [] and not checkpoint_path(tmp_path).exists()
    # The 310 rows are indexed 40 at a time into files; the checkpoint then names them.
    summary = summary_with_a_small_index(recipe)
    assert (summary["resumed_ok"], summary["ok"], summary["total"]) == (310, 40, 350)
    assert_one_row_each(tmp_path, 350)
    head = json.loads(checkpoint_path(tmp_path).read_bytes())
    named = sorted(entry[0] for entry in head["files"])
    assert named == sorted(p.name for p in ids_files(tmp_path))
    # Files were written before the checkpoint's (numbered from 1 in an emptied folder): the
    # index's, taken in and merged by the checkpoint (without them it would be resume-1.ids).
    assert max(serial(name) for name in named) > 1
    noop = summary_of(recipe)  # from the checkpoint: nothing runs again
    assert (noop["resumed_ok"], noop["ok"], noop["total"]) == (350, 0, 350)


def test_runs_that_cannot_use_a_checkpoint_leave_none(tmp_path: Path) -> None:
    recipe = checkpoint_job(tmp_path, 10)
    summary_of(recipe, "--limit", "5")  # a limit counts records: no checkpoint
    assert not checkpoint_path(tmp_path).exists()
    data = tmp_path / "data.jsonl"
    data.write_bytes(data.read_bytes().rstrip(b"\n"))  # a last line that may yet grow
    assert summary_of(recipe)["ok"] == 5
    assert not checkpoint_path(tmp_path).exists()
    with open(data, "ab") as fh:
        fh.write(b"\n" + json.dumps({"id": "r10", "text": "t10"}).encode() + b"\n")
    assert summary_of(recipe)["ok"] == 1
    assert checkpoint_path(tmp_path).exists()
    assert_one_row_each(tmp_path, 11)


def test_another_shard_of_the_job_does_not_take_the_first_ones_records_for_done(
    tmp_path: Path,
) -> None:
    """The job hash leaves the shard out; the checkpoint must not."""
    recipe = checkpoint_job(tmp_path, 40)
    first = summary_of(recipe, "--set", "data.shard=0/2")
    assert checkpoint_path(tmp_path).exists()
    second = summary_of(recipe, "--set", "data.shard=1/2")
    assert first["ok"] + second["ok"] == 40 and second["ok"] > 0
    assert_one_row_each(tmp_path, 40)


def test_a_run_killed_after_a_checkpoint_loses_and_repeats_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Real signals: a completed run leaves a checkpoint, records are appended, the next run is
    killed (SIGKILL) mid-way, and the one after it finishes the job from the checkpoint plus
    the rows the killed run wrote: every record has one row, and no record that had a row when
    the process died is called again."""
    from .test_resume import Output, Run, make_run, requested, settle

    fake_openai.latency_s = 0.01
    recipe, out = make_run(tmp_path, fake_openai, 100, concurrency=4)
    code, stderr = Run(recipe).finish()
    assert code == 0, stderr
    assert checkpoint_path(tmp_path).exists()
    append = [{"id": f"r{i:05d}", "text": f"record number {i}"} for i in range(100, 400)]
    with open(tmp_path / "data.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in append)
    before = settle(fake_openai)
    run = Run(recipe)
    run.wait_until(lambda: out.lines() >= 150)
    run.process.kill()
    run.finish()
    at_kill = settle(fake_openai)
    done_at_kill = set(out.ids())
    assert len(done_at_kill) < 400, "the kill came too late to test anything"
    code, stderr = Run(recipe).finish()
    assert code == 0, stderr
    ids = [r["id"] for r in Output(out.path).rows()]
    assert sorted(ids) == [f"r{i:05d}" for i in range(400)]
    after = requested(fake_openai, at_kill)
    assert not done_at_kill.intersection(after), "a finished record was called again"
    in_flight = set(requested(fake_openai, before, at_kill)) - done_at_kill
    assert set(after) == set(ids) - done_at_kill
    assert all(c == 1 or i in in_flight for i, c in Counter(requested(fake_openai)).items())
    noop = summary_of(recipe)
    assert (noop["ok"], noop["resumed_ok"]) == (0, 400)


def test_a_run_killed_mid_way_resumes_from_the_checkpoint_it_saved_as_it_went(
    tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real signals, no completed run before: the run saves checkpoints as it goes (every
    0.1 s here, 30 s by default) and is killed (SIGKILL) mid-way. The checkpoint it left
    describes a prefix of the input whose every record has its row in the output's prefix,
    and the next run starts from it (its counts, changed here, show it) and finishes the job:
    one row per record, no finished record called again."""
    from .test_resume import Output, Run, make_run, requested, settle

    monkeypatch.setenv("LLMRUN_CHECKPOINT_S", "0.1")
    fake_openai.latency_s = 0.02
    recipe, out = make_run(tmp_path, fake_openai, 600, concurrency=4)
    run = Run(recipe)
    run.wait_until(lambda: checkpoint_path(tmp_path).exists() and out.lines() >= 150)
    run.process.kill()
    run.finish()
    at_kill = settle(fake_openai)
    done_at_kill = set(out.ids())
    assert len(done_at_kill) < 600, "the kill came too late to test anything"
    header = json.loads(checkpoint_path(tmp_path).read_bytes().split(b"\n", 1)[0])
    data = (tmp_path / "data.jsonl").read_bytes()
    prefix = data[: header["input"]["size"]]
    assert 0 < header["selected"] == prefix.count(b"\n") == header["lines"] < 600
    assert prefix.endswith(b"\n")
    # Every record in the input's prefix has its row in the output's prefix.
    written = (tmp_path / "out.jsonl").read_bytes()[: header["output"]["size"]]
    rows = [json.loads(line) for line in written.splitlines()]
    assert {json.loads(line)["id"] for line in prefix.splitlines()} <= {r["id"] for r in rows}
    assert header["ok"] == sum(r["status"] == "ok" for r in rows)
    tamper_counts(tmp_path, 1_000_000)
    code, stderr = Run(recipe).finish()
    assert code == 0, stderr
    ids = [r["id"] for r in Output(out.path).rows()]
    assert sorted(ids) == [f"r{i:05d}" for i in range(600)]
    assert not done_at_kill.intersection(requested(fake_openai, at_kill))
    noop = summary_of(recipe)
    # The resumed run counted the rows before the checkpoint from it, not from the output.
    assert noop["resumed_ok"] == 1_000_000 + 600 - header["ok"]


def test_the_frontier_is_where_every_record_before_has_its_row() -> None:
    frontier = Frontier()
    frontier.read(["a", "b"], (10, 2), 2)
    frontier.read(["c", "a"], (20, 4), 4)  # "a" again: a repeated record, in flight twice
    frontier.read([], (25, 5), 5)  # a chunk of done records only
    assert frontier.reached is None
    for rid in ("c", "a", "b"):  # rows come in any order
        frontier.written(rid)
    assert frontier.reached == ((10, 2), 2)  # "a" of the second chunk has no row yet
    frontier.written("x")  # a row this reader did not read (a batch phase's): ignored
    frontier.written("a")
    assert frontier.reached == ((25, 5), 5)
    frontier.read(["d"], None, 6)  # a last line without its newline: no point to stop at
    frontier.written("d")
    assert frontier.reached == ((25, 5), 5)


@pytest.mark.parametrize(
    ("value", "seconds"), [("5", 5.0), ("0", 0.0), ("nan", 30.0), ("inf", 30.0), ("x", 30.0)]
)
def test_the_checkpoint_interval_is_a_finite_number_or_the_default(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv("LLMRUN_CHECKPOINT_S", value)
    assert every_s() == seconds
