"""How a run ended: the value ``Engine.run`` returns and ``--json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..values import RunEnd
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
        out = dict(self.to_hook())
        if not out["endpoints"]:
            del out["endpoints"]  # only a run over provider.base_urls has them
        return out

    def to_hook(self) -> RunEnd:
        """What ``run_finished`` observers receive."""
        s = self.stats
        return RunEnd(
            status=self.status,
            reason=self.reason,
            output=self.output,
            ok=s.ok,
            error=s.error,
            resumed_ok=s.resumed_ok,
            resumed_error=s.resumed_error,
            total=s.total,
            retries=s.retries,
            cached=s.cached,
            retries_by_code=dict(s.retries_by_code),
            errors_by_code=dict(s.errors_by_code),
            cost_usd=round(s.cost_usd, 8),
            job_cost_usd=round(s.cost_usd + s.resumed_cost_usd, 8),
            tokens={"input": s.input_tokens, "output": s.output_tokens},
            elapsed_s=round(s.elapsed, 3),
            warnings=list(self.warnings),
            endpoints=s.endpoint_counts(),
        )
