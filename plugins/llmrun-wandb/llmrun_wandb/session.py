"""One llmrun run as one W&B run: counters kept per row, logged at most every few seconds."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from llmrun import Row, RunEnd, RunStart

ROW_COLUMNS = ["line", "id", "status", "error_type", "message", "latency_s", "cost_usd", "attempts"]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class Session:
    """Counts rows as they are written and logs the counts to a W&B run."""

    def __init__(self, wandb: Any, run: Any, every_s: float) -> None:
        self.wandb = wandb
        self.run = run
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.rows = self.ok = self.error = self.retries = 0
        self.input_tokens = self.output_tokens = 0
        self.cost = 0.0
        self.errors: Counter[str] = Counter()
        self._rows_at_last = 0

    @classmethod
    def start(cls, run: RunStart) -> Session | None:
        if os.environ.get("LLMRUN_WANDB", "1").lower() in ("0", "false", "no", "off"):
            return None
        import wandb

        handle = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "llmrun",
            name=f"{run.recipe} {run.started_at}",
            job_type="llmrun",
            config=dict(run),  # recipe, recipe_hash, output, provider, model, ...
            reinit=True,
        )
        every = float(os.environ.get("LLMRUN_WANDB_EVERY_S") or 5.0)
        return cls(wandb, handle, every)

    def row(self, row: Row) -> None:
        # Runs on the writer's path: count, and log only when the interval is up.
        self.rows += 1
        if row.get("status") == "ok":
            self.ok += 1
        else:
            self.error += 1
            error = row.get("error")
            self.errors[str(error.get("type") if isinstance(error, dict) else "unknown")] += 1
        self.retries += max(0, int(_number(row.get("attempts"))) - 1)
        self.cost += _number(row.get("cost_usd"))
        response = row.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            self.input_tokens += int(_number(usage.get("input_tokens")))
            self.output_tokens += int(_number(usage.get("output_tokens")))
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.log(now)

    def metrics(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-9)
        since = max(now - self.last, 1e-9)
        data: dict[str, Any] = {
            "rows/done": self.rows,
            "rows/ok": self.ok,
            "rows/error": self.error,
            "throughput/rows_per_s": (self.rows - self._rows_at_last) / since,
            "throughput/mean_rows_per_s": self.rows / elapsed,
            "tokens/input": self.input_tokens,
            "tokens/output": self.output_tokens,
            "tokens/per_s": (self.input_tokens + self.output_tokens) / elapsed,
            "cost/usd": round(self.cost, 8),
            "retries": self.retries,
            "elapsed_s": elapsed,
        }
        for kind, n in self.errors.items():
            data[f"errors/{kind}"] = n
        return data

    def log(self, now: float) -> None:
        self.run.log(self.metrics(now), step=self.rows)
        self.last, self._rows_at_last = now, self.rows

    def finish(self, summary: RunEnd) -> None:
        try:
            self.log(time.monotonic())
            for key in (
                "status",
                "reason",
                "total",
                "resumed_ok",
                "resumed_error",
                "cost_usd",
                "job_cost_usd",
                "elapsed_s",
            ):
                self.run.summary[key] = summary.get(key)
            if Path(summary.output).is_file():  # a JSONL output (not a parquet folder)
                self.tables(Path(summary.output))
        finally:
            self.run.finish(exit_code=0 if summary.status == "completed" else 1)

    def tables(self, output: Path) -> None:
        """The tables of ``llmrun report``, over the whole output (earlier runs' rows too)."""
        from llmrun import report_data

        data = report_data(output)
        table = self.wandb.Table
        self.run.log(
            {
                "report/errors_by_type": table(
                    columns=["error_type", "rows"],
                    data=[[k, n] for k, n in data.errors_by_type.most_common()],
                ),
                "report/latency_percentiles": table(
                    columns=["percentile", "seconds"],
                    data=[[k, v] for k, v in data.percentiles().items()],
                ),
                "report/slowest": table(columns=ROW_COLUMNS, data=_refs(data.slowest.rows())),
                "report/costliest": table(columns=ROW_COLUMNS, data=_refs(data.costliest.rows())),
                "report/failed": table(columns=ROW_COLUMNS, data=_refs(data.failed)),
            },
            step=self.rows,
        )
        self.run.summary["report/rows"] = data.rows
        self.run.summary["report/cost_usd"] = round(data.cost_usd, 8)


def _refs(refs: list[Any]) -> list[list[Any]]:
    return [
        [r.line, r.id, r.status, r.error_type, r.message, r.latency_s, r.cost_usd, r.attempts]
        for r in refs
    ]
