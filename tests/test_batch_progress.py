"""Live progress of a batch-mode run: the display and `llmrun status` say what the batches do.

The real CLI runs against the fake batch API on 127.0.0.1 with a held batch (it stays
``in_progress``), so the run waits as a real one does for hours.
"""

from __future__ import annotations

import io
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from llmrun.job.stats import BatchPart, BatchProgress, RunStats
from llmrun.run import watch
from llmrun.run.progress import make_progress, status_line
from llmrun.testing.fake_batches import FakeBatches

from .conftest import llmrun_command, make_records, read_cli, run_cli, write_jsonl, write_recipe
from .test_batch_openai import batch_recipe


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str, seen: list[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} never shown; shown:\n{''.join(seen)}")


def test_a_waiting_batch_run_shows_its_batches_and_status_says_the_same(tmp_path: Path) -> None:
    with FakeBatches() as fake:
        fake.hold = True
        write_jsonl(tmp_path / "data.jsonl", make_records(15))
        recipe = write_recipe(
            tmp_path,
            batch_recipe(fake.url, batch_max_requests=10, batch_poll_s=0.2, batch_poll_max_s=0.5),
        )
        proc = subprocess.Popen(
            [*llmrun_command(), "run", str(recipe), "--progress", "plain"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines, seen = _lines(proc), []
            line = _wait_for(lines, "p0002 in_progress", seen)
            # Two batches (10 + 5 records), both created and running, nothing merged yet.
            assert "p0001 in_progress 0/10" in line
            assert "p0002 in_progress 0/5" in line
            assert "records submitted 15, in batches 15, merged 0" in line
            # The manifest is rewritten as the batches' state changes (here: the run starts
            # waiting for its next poll), so status shows what the display does. The display's
            # own "next poll in" is checked in-process below (its plain lines come every 10 s).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = read_cli("status", str(recipe), "--json", cwd=tmp_path)
                report = json.loads(status.stdout)
                if report["next_poll_at"] is not None:
                    break
                time.sleep(0.5)
            assert report["running"] is True
            assert report["batch_records"] == {"submitted": 15, "in_batches": 15, "merged": 0}
            assert report["next_poll_at"] > time.time() - 10
            assert [b["state"] for b in report["batches"]] == ["in_progress", "in_progress"]
            text = read_cli("status", str(recipe), cwd=tmp_path).stdout
            assert "records submitted 15, in batches 15, merged 0" in text
            assert "the running run polls next in" in text
            fake.hold = False
            line = _wait_for(lines, "2 merged", seen)
            assert "records submitted 15, in batches 0, merged 15" in line
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    report = json.loads(read_cli("status", str(recipe), "--json", cwd=tmp_path).stdout)
    assert report["batch_records"] == {"submitted": 15, "in_batches": 0, "merged": 15}
    assert report["running"] is False and report["next_poll_at"] is None
    # The report lists the batches and their states.
    proc = run_cli("report", str(recipe), "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    batches = html[html.index('id="batches"') :]
    for part, n in (("p0001", 10), ("p0002", 5)):
        cells = re.search(
            rf"<tr><td>{part}</td><td>(batch_[^<]+)</td>\s*<td>([^<]+)</td>\s*"
            rf"<td class=\"n\">(\d+)</td>",
            batches,
        )
        assert cells, part
        assert cells.group(2).endswith(", merged"), cells.group(2)
        assert int(cells.group(3)) == n


def test_the_rich_display_adds_a_line_for_the_batches() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    progress = make_progress("rich", console)
    stats = RunStats(total=30)
    stats.batch = BatchProgress(
        parts=[
            BatchPart(
                "p0001", "batch_1", "in_progress", 10, {"total": 10, "completed": 4, "failed": 1}
            ),
            BatchPart("p0002", "batch_[red]x", "[bold]validating\x1b[2J", 10, {}),
            BatchPart("p0003", "batch_3", "merged", 10, {}),
        ],
        submitted=30,
        in_batches=20,
        merged=10,
        next_poll_at=time.time() + 65,
    )
    progress.start("labels", stats)
    progress.stop(stats)
    text = out.getvalue()
    assert "p0001 in_progress 4/10 failed 1" in text
    assert "p0002 [bold]validating" in text  # provider text is shown, not read as markup
    assert "\x1b[2J" not in text  # nor allowed to clear the screen
    assert "1 merged" in text
    assert "records submitted 30, in batches 20, merged 10" in text
    assert "next poll in 1:0" in text  # 1:04 or 1:05
    assert "batches:" in status_line(stats)


def test_the_manifest_follows_a_change_of_the_batches_without_waiting_for_the_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The run's tick rewrote the manifest only every SYNC_EVERY_S (5 s), so `status` showed a
    # waiting batch run's batches late. With the periodic sync pushed out of reach, only the
    # change of the batches' state can write it here.
    monkeypatch.setattr(watch, "SYNC_EVERY_S", 1e9)
    written: list[Any] = []
    wrote: list[anyio.Event] = []  # made in the event loop

    class State:
        def write_manifest(self, manifest: Any) -> None:
            written.append(manifest.get("batch"))
            wrote[0].set()

    class Writer:
        def sync(self) -> None:
            pass

    stats = RunStats(total=10)
    manifest: Any = {"runs": [{}]}
    progress = make_progress("none", Console(file=io.StringIO()))

    async def main() -> None:
        wrote.append(anyio.Event())
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.tick, progress, stats, Writer(), State(), manifest)
            await anyio.sleep(3 * watch.TICK_S)
            assert written == []  # nothing changed: nothing written
            stats.batch = BatchProgress(parts=[], submitted=10, in_batches=10, merged=0)
            with anyio.fail_after(30):
                await wrote[0].wait()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert written[0]["submitted"] == 10 and written[0]["in_batches"] == 10
