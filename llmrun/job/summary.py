"""How a run ended: the value ``Engine.run`` returns and ``--json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .stats import RunStats

Status = Literal["completed", "interrupted", "aborted", "budget"]


@dataclass
class RunSummary:
    """How a run ended."""

    status: Status
    stats: RunStats
    output: str
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        endpoints = {"endpoints": s.endpoint_counts()} if s.endpoints else {}
        return {
            "status": self.status,
            "reason": self.reason,
            "output": self.output,
            "ok": s.ok,
            "error": s.error,
            "resumed_ok": s.resumed_ok,
            "resumed_error": s.resumed_error,
            "total": s.total,
            "retries": s.retries,
            "retries_by_code": dict(s.retries_by_code),
            "errors_by_code": dict(s.errors_by_code),
            "cost_usd": round(s.cost_usd, 8),
            "job_cost_usd": round(s.cost_usd + s.resumed_cost_usd, 8),
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "elapsed_s": round(s.elapsed, 3),
            "warnings": list(self.warnings),
            **endpoints,
        }
