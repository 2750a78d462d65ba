"""The durable state of batch mode, in ``<output>.llmrun/batch/``.

    journal.json          every batch part and the step it reached (rewritten atomically)
    pNNNN.jsonl           the part's input lines, as sent
    pNNNN.records.jsonl   [custom_id, record id, where, record] per line: what merging needs
    pNNNN.results.jsonl   the provider's result lines, once downloaded

A part moves through ``written -> uploaded -> creating -> created -> ended -> downloaded ->
merged``. Each step is in the journal (temp file, fsync, rename) before the next one starts.
``creating`` is the intent to create a batch, recorded before the request is sent: a rerun that
finds it asks the provider for a batch carrying the part's tag before creating one again.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..durable import fsync_dir
from ..errors import RunAborted
from ..job.stepjournal import is_result
from ..job.store import atomic_write, open_state_file, read_state_file

STEPS = ("written", "uploaded", "creating", "created", "ended", "downloaded", "merged")
# Bytes of journal.json read: a 10^8-record job's thousands of parts stay well under 1 MiB.
JOURNAL_CAP = 64 << 20
# Bytes of one line of a part file: a record as sent (with its finished steps' results) or one
# result line from the provider; far past any real one, it keeps a damaged file from filling
# memory (a line without end).
LINE_CAP = 64 << 20
KILL_ENV = "LLMRUN_TEST_KILL_AFTER"  # test hook: SIGKILL this process right after a step


@dataclass
class Part:
    """One batch file and where it stands."""

    name: str  # p0001
    requests: int
    bytes: int
    tag: str  # unique to this part of this output: the idempotency key at the provider
    step: str = "written"
    input_id: str | None = None
    batch_id: str | None = None
    intent_at: float | None = None  # unix time the create request was about to be sent
    created_local: float | None = None  # unix time the batch id was recorded
    info: dict[str, Any] | None = None  # the last BatchInfo seen (to_json)
    cancel_reason: str | None = None  # "user" (llmrun cancel) or "deadline" (auto mode)
    merged: dict[str, int] = field(default_factory=dict)  # ok / error / again counts
    # A steps: recipe (docs/steps.md): the step whose requests this part holds; each record's
    # line then carries the results of the steps it has finished (``Journal.carried``).
    recipe_step: str | None = None


class Journal:
    """The batch state of one output; ``save()`` after every change."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.path = folder / "journal.json"
        self.key = secrets.token_hex(4)
        self.next_part = 1
        self.parts: list[Part] = []
        self.tries: dict[str, int] = {}  # record id -> failed batch attempts so far
        self.spent_usd = 0.0

    @classmethod
    def load(cls, folder: Path) -> Journal:
        journal = cls(folder)
        try:
            data = json.loads(read_state_file(journal.path, JOURNAL_CAP))
            journal.key = str(data["key"])
            journal.next_part = int(data["next_part"])
            journal.parts = [Part(**p) for p in data["parts"]]
            journal.tries = {str(k): int(v) for k, v in data.get("tries", {}).items()}
            journal.spent_usd = float(data.get("spent_usd", 0.0))
        except FileNotFoundError:
            return cls(folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise unreadable(journal.path, exc) from None
        return journal

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        data = {
            "version": 1,
            "key": self.key,
            "next_part": self.next_part,
            "parts": [asdict(p) for p in self.parts],
            "tries": self.tries,
            "spent_usd": self.spent_usd,
        }
        atomic_write(self.path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")

    def new_part_name(self) -> str:
        name = f"p{self.next_part:04d}"
        self.next_part += 1
        return name

    def tag(self, part: str) -> str:
        return f"llmrun-{self.key}-{part}"

    def file(self, part: str, kind: str) -> Path:
        return self.dir / f"{part}.{kind}.jsonl" if kind else self.dir / f"{part}.jsonl"

    def active(self) -> list[Part]:
        return [p for p in self.parts if p.step != "merged"]

    def records(self, part: Part) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """(custom_id, record id, where, record) for each line of the part."""
        for cid, rid, where, data, _ in self.carried(part):
            yield cid, rid, where, data

    def carried(self, part: Part) -> Iterator[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
        """(custom_id, record id, where, record, finished steps) for each line of the part:
        what a steps: record has finished before this part's step (empty otherwise)."""
        path = self.file(part.name, "records")
        for raw in part_lines(path):
            try:
                cid, rid, where, data, *rest = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("a record that is not an object")
            except (ValueError, TypeError) as exc:
                # Written by llmrun: a line it cannot read means the file was damaged, and which
                # records it held is not known: nothing is guessed.
                raise unreadable(path, exc) from None
            carried = rest[0] if rest and isinstance(rest[0], dict) else {}
            finished = {k: v for k, v in carried.items() if is_result(v)}
            yield str(cid), str(rid), str(where), data, finished


def part_lines(path: Path) -> Iterator[bytes]:
    """The lines of a part file, read as the untrusted file it may be (a state folder can come
    with a shared output): only a regular file, each line within ``LINE_CAP``; else RunAborted
    naming the file (a FIFO made the merge wait forever)."""
    try:
        with open_state_file(path) as fh:
            while raw := fh.readline(LINE_CAP + 1):
                if len(raw) > LINE_CAP:
                    raise ValueError(f"a line longer than {LINE_CAP} bytes")
                if raw.strip():
                    yield raw
    except (OSError, ValueError) as exc:
        raise unreadable(path, exc) from None


def unreadable(path: Path, exc: Exception) -> RunAborted:
    """The batch state (the journal, or a part's file beside it) cannot be read: the journal
    says which batches were submitted and paid, so nothing is guessed past it."""
    what = "journal" if path.name == "journal.json" else "file"
    return RunAborted(
        f"the batch {what} {path} cannot be read ({type(exc).__name__}: {exc}); the journal "
        f"records the batches already submitted and paid: restore the file, or move "
        f"{path.parent} aside to submit them again"
    )


def has_running(folder: Path) -> bool:
    """Whether the batch state in ``folder`` has batches not merged yet."""
    return (folder / "journal.json").exists() and bool(Journal.load(folder).active())


def checkpoint(step: str) -> None:
    """The test hook: ``LLMRUN_TEST_KILL_AFTER=step`` (or ``step:N``, the Nth time) kills this
    process with SIGKILL right here, so tests can stop a run at every step of the life cycle."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != step:
        return
    counts = _HITS
    counts[step] = counts.get(step, 0) + 1
    if counts[step] >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_HITS: dict[str, int] = {}


def make_durable(tmp: Path, path: Path) -> None:
    """Give a written file its final name durably: fsync it, rename it, fsync the folder."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
