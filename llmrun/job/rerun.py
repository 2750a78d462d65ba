"""``llmrun run --retry-errors``: take the error rows out of the output so they run again.

The output is rewritten through its writer (``job.output.rewrite_output``, the writer's
``rewrite``), so the output stays "exactly one row per record" at every instant, the old one is
kept in the state folder as ``retried-<time><suffix>``, and a crash at any point leaves the old
output or the new one whole: see ``llmrun.RewritableWriter`` and each writer's ``rewrite``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ErrorRows:
    """The edit ``--retry-errors`` rewrites the output with: every error row is dropped (and
    counted); for a ``steps:`` recipe, the steps a dropped row had finished are kept in
    ``finished_steps`` (id -> step -> result), so only the failed step runs again."""

    def __init__(self) -> None:
        self.dropped = 0
        self.finished_steps: dict[str, dict[str, Any]] = {}

    def __call__(self, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if row.get("status") != "error":
            return row
        self.dropped += 1
        steps, rid = row.get("steps"), row.get("id")
        if isinstance(steps, Mapping) and isinstance(rid, str):
            ok = {
                name: dict(result)
                for name, result in steps.items()
                if isinstance(result, Mapping) and result.get("status") == "ok"
            }
            if ok:
                self.finished_steps[rid] = ok
        return None
