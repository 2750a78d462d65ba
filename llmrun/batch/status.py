"""What ``llmrun status`` shows about batch mode: one entry per batch, read from the journal
(no provider call: the journal holds the last state seen)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..job.stats import BatchPart, BatchProgress
from ..job.store import RunState
from ..recipe.model import Recipe
from .journal import Journal


def describe(recipe: Recipe) -> list[dict[str, Any]]:
    """Every batch of the recipe's output (see ``describe_output``)."""
    return describe_output(recipe.output_path)


def describe_output(output: Path) -> list[dict[str, Any]]:
    """Every batch of an output: ``part``, ``batch_id``, ``step`` (llmrun's),
    ``state`` and ``outcome`` (the provider's, normalized), ``counts``, ``requests``,
    ``age_s`` (since it was created), ``reason`` (why it failed) and ``merged`` counts."""
    journal = Journal.load(RunState(output).dir / "batch")
    now = time.time()
    out: list[dict[str, Any]] = []
    for part in journal.parts:
        info = part.info or {}
        started = part.created_local or part.intent_at
        out.append(
            {
                "part": part.name,
                "batch_id": part.batch_id,
                "step": part.step,
                "state": info.get("state", "not created"),
                "outcome": info.get("outcome"),
                "counts": dict(info.get("counts") or {}),
                "requests": part.requests,
                "age_s": None if started is None else round(now - started, 1),
                "reason": info.get("reason"),
                "cancelled": part.cancel_reason,
                "merged": dict(part.merged),
            }
        )
    return out


def progress_of(journal: Journal, next_poll_s: float | None = None) -> BatchProgress:
    """What the progress display shows of the journal's batches (``next_poll_s``: seconds to
    the next poll, while the runner waits)."""
    progress = BatchProgress()
    for part in journal.parts:
        info = part.info or {}
        state = str(info.get("state") or part.step)
        if part.step == "merged":
            state = "merged"
            progress.merged += sum(n for k, n in part.merged.items() if k != "again")
        else:
            progress.in_batches += part.requests
        if part.batch_id:
            progress.submitted += part.requests
        counts = {str(k): int(v) for k, v in (info.get("counts") or {}).items()}
        progress.parts.append(BatchPart(part.name, part.batch_id, state, part.requests, counts))
    if next_poll_s is not None:
        progress.next_poll_at = time.time() + next_poll_s
    return progress
