"""``llmrun run --retry-errors``: take the error rows out of the output so they run again.

The output stays "exactly one line per record" at every instant. Under the run's lock:

1. the rows that are not errors are written to a temporary file beside the output, fsynced;
2. the old output is hard-linked (copied where links are impossible) into the state folder as
   ``retried-<time>.jsonl``, so it is kept, never deleted;
3. the temporary file replaces the output in one atomic rename, and the folder is fsynced.

A crash before step 3 leaves the old output in place (the next ``--retry-errors`` does the same
again); after it, the new one. A torn last line (a crash mid-write) is not a row: it is left out
of the new output and stays in the kept copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ..durable import fsync_dir, link_or_copy


def drop_error_rows(
    output: Path, state_dir: Path, finished_steps: dict[str, dict[str, Any]] | None = None
) -> tuple[int, Path | None]:
    """Rewrite ``output`` without its error rows: (how many were dropped, where the old
    output is kept) or (0, None) when there was nothing to drop. ``finished_steps`` (a
    ``steps:`` recipe) gets, for each dropped row, the steps it had finished: only the failed
    step runs again."""
    if not output.exists():
        return 0, None
    dropped = 0
    tmp = output.with_name(f".{output.name}.{os.getpid()}.retry.tmp")
    with open(output, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            if not line.endswith(b"\n"):
                continue  # a torn tail: not a row
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("status") == "error":
                dropped += 1
                steps = row.get("steps")
                if finished_steps is not None and isinstance(steps, dict):
                    ok = {
                        name: result
                        for name, result in steps.items()
                        if isinstance(result, dict) and result.get("status") == "ok"
                    }
                    if ok and isinstance(row.get("id"), str):
                        finished_steps[row["id"]] = ok
                continue
            dst.write(line)
        dst.flush()
        os.fsync(dst.fileno())
    if not dropped:
        tmp.unlink()
        return 0, None
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    kept = state_dir / f"retried-{stamp}{output.suffix}"
    link_or_copy(output, kept)
    os.replace(tmp, output)
    fsync_dir(output.parent)
    fsync_dir(state_dir)
    return dropped, kept
