"""The resume checkpoint's files of ids (job/idfiles.py) through its Saver: what they hold after
many checkpoints and merges, the memory a merge takes, and what a crash mid-way leaves."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmrun.builtins.writers import JsonlWriter
from llmrun.job import checkpoint
from llmrun.job.checkpoint import IndexSpill, Saver, read_checkpoint
from llmrun.job.idfiles import MAX_FILES
from llmrun.job.store import IdSet, index_writer

SCOPE = "job {}"


class Job:
    """An input and an output file of ids, one a line, and a Saver over them: ``write``
    appends rows as a run does, ``save`` saves a checkpoint up to the end of both."""

    def __init__(self, folder: Path) -> None:
        self.state = folder / "out.jsonl.llmrun"
        self.state.mkdir()
        self.data, self.output = folder / "data.jsonl", folder / "out.jsonl"
        self.data.write_bytes(b"")
        self.output.write_bytes(b"")
        self.lines = 0
        self.saver = Saver(
            self.state, SCOPE, self.data, self.output, self.read_ids, None, [], [], 0, 0, 0, 0.0
        )

    def read_ids(self, start: int, end: int) -> Iterator[tuple[list[bytes], int, int, list[float]]]:
        with open(self.output, "rb") as fh:  # in blocks, as the JSONL writer gives them
            fh.seek(start)
            while start < end:
                lines = fh.readlines(min(end - start, 1 << 14))
                start += sum(len(line) for line in lines)
                yield [line[:-1] for line in lines], len(lines), 0, []

    def write(self, ids: list[str]) -> None:
        with open(self.output, "ab") as fh:
            fh.write("".join(f"{rid}\n" for rid in ids).encode())
        with open(self.data, "ab") as fh:
            fh.write(b"{}\n" * len(ids))
        self.lines += len(ids)

    def save(self) -> None:
        size = self.data.stat().st_size
        self.saver.save((size, self.lines), self.lines, self.output.stat().st_size)

    def done(self) -> IdSet:
        point = read_checkpoint(self.state, SCOPE, self.data, self.output)
        assert point is not None
        return IdSet(layers=point.layers)

    def on_disk(self) -> set[str]:
        return {p.name for p in self.state.iterdir() if p.name != checkpoint.NAME}


def test_many_checkpoints_keep_every_id_in_few_files_and_none_in_memory(tmp_path: Path) -> None:
    job = Job(tmp_path)
    rng = random.Random(5)
    written: list[str] = []
    for save in range(60):
        # Rows since the last checkpoint: a few to thousands, and now and then a repeated id
        # (two records of the input sharing one).
        ids = [f"r{len(written) + i}" for i in range(rng.choice((1, 7, 300, 4000)))]
        if written and save % 7 == 0:
            ids.append(rng.choice(written))
        job.write(ids)
        written += ids
        job.save()
        files = job.saver.files
        assert job.saver.pending == []  # between checkpoints, the ids are on disk only
        assert 1 <= len(files) <= MAX_FILES
        # The folder holds the files the head names and no other (merged ones are deleted).
        assert job.on_disk() == {f.name for f in files}
    done = job.done()
    assert all(rid in done for rid in written)
    assert not any(f"x{i}" in done for i in range(5000))
    assert sum(f.n for f in job.saver.files) < len(written)  # repeats are not held twice
    # Sizes fall from the oldest file to the newest: merges took in the newer, smaller ones.
    sizes = [f.n for f in job.saver.files]
    assert len(sizes) < 8 and sizes[0] == max(sizes), sizes


def test_a_merge_holds_a_small_share_of_the_ids_it_merges(tmp_path: Path) -> None:
    # The checkpoint used to be one file rewritten from every id held in memory: 16 bytes a
    # record (1.6 GB at 10^8), twice over while layers were merged.
    job = Job(tmp_path)
    for block in range(3):
        job.write([f"r{block}-{i}" for i in range(100_000)])
        job.save()
    assert len(job.saver.files) >= 1
    job.write([f"last-{i}" for i in range(100_000)])  # as large as the files: all are merged
    tracemalloc.start()
    try:
        job.save()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(job.saver.files) == 1
    digests = 16 * 400_000
    # The 100,000 new ids are read from the output 16,384 at a time at most (256 KiB of
    # digests, SPILL_IDS; all at once held 2.05 MB here); then each of the 256 first bytes of
    # all 400,000 is merged on its own.
    assert peak < digests / 4, (peak, digests)
    done = job.done()
    assert "r0-5" in done and "last-99999" in done and "r3-0" not in done


def test_a_crash_before_the_head_is_replaced_leaves_the_last_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(tmp_path)
    job.write([f"a{i}" for i in range(500)])
    job.save()
    before = job.on_disk()
    job.write([f"b{i}" for i in range(2000)])  # merges the first file into a new one

    def killed(state_dir: Path, point: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(checkpoint, "write_checkpoint", killed)
    with pytest.raises(OSError):
        job.save()
    monkeypatch.undo()
    # The new file is there, not named; the old head and the file it names are untouched.
    assert before < job.on_disk()
    done = job.done()
    assert "a499" in done and "b0" not in done
    # Leftovers of a run killed while writing: pruned by the next checkpoint.
    (job.state / ".resume-9.ids.4242.tmp").write_bytes(b"half")
    job.save()
    assert job.on_disk() == {f.name for f in job.saver.files}
    done = job.done()
    assert "a499" in done and "b1999" in done


def index(out: Path, state: Path, spill_at: int | None) -> tuple[IdSet, SimpleNamespace, int, Any]:
    """The output indexed as a run starts (job.store.index_writer), its ids past ``spill_at``
    in files of ids; the set, the counts, the traced peak, the spill."""
    writer = JsonlWriter({"path": str(out)}, SimpleNamespace(base_dir=out.parent, warn=print))
    stats = SimpleNamespace(resumed_ok=0, resumed_error=0, resumed_cost_usd=0.0)
    spill = None if spill_at is None else IndexSpill(state, at=spill_at)
    tracemalloc.start()
    try:
        done = index_writer(writer, stats, spill=spill)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()  # (index_writer opens it for appending, as a run does)
    return done, stats, peak, spill


def test_an_output_indexed_at_start_holds_a_bounded_share_of_its_ids_in_memory(
    tmp_path: Path,
) -> None:
    # An output without a checkpoint (another selection, an older llmrun, a shared file) was
    # indexed into memory whole: 16 bytes a row, 1.6 GB at 10^8 rows. Past
    # checkpoint.INDEX_IN_MEMORY ids (2**20; 16,384 here) they go to files of ids.
    out = tmp_path / "out.jsonl"
    state = tmp_path / "out.jsonl.llmrun"
    state.mkdir()
    n = 200_000
    with open(out, "w", encoding="utf-8") as fh:
        for i in range(n):
            status = "error" if i % 10 == 0 else "ok"
            fh.write(json.dumps({"id": f"row-{i}", "status": status, "cost_usd": 0.5}) + "\n")
    whole, counts, whole_peak, _ = index(out, state, None)
    spilled, spilled_counts, spilled_peak, spill = index(out, state, 16_384)
    assert spill is not None and 1 <= len(spill.files) <= MAX_FILES
    assert spilled_counts == counts
    assert (counts.resumed_ok, counts.resumed_error) == (180_000, 20_000)
    sample = [f"row-{i}" for i in range(0, n, 997)] + ["row-199999"]
    assert all(rid in spilled and rid in whole for rid in sample)
    assert not any(f"row-{i}" in spilled for i in range(n, n + 2000))
    assert spilled_peak < whole_peak / 2, (spilled_peak, whole_peak)
    # A Saver takes the files as its own: the first checkpoint names them, rewrites nothing
    # more than the ids past them, and every id is found through it.
    job = Job.__new__(Job)
    job.state, job.output, job.data = state, out, tmp_path / "data.jsonl"
    job.data.write_bytes(b"{}\n" * n)
    job.lines = n
    pending = spilled.layers()[len(spill.files) :]
    job.saver = Saver(
        state, SCOPE, job.data, out, job.read_ids, None, spill.files, pending,
        out.stat().st_size, 0, 0, 0.0,
    )  # fmt: skip
    job.save()
    assert job.on_disk() == {f.name for f in job.saver.files}
    assert {f.name for f in spill.files} & job.on_disk()  # (the oldest kept as they were)
    done = job.done()
    assert all(rid in done for rid in sample)
