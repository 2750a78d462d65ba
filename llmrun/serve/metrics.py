"""``GET /metrics``: counters in the Prometheus text format (written by hand: a dozen lines do
not need a client library)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..job.stats import RunStats
from ..run.keystate import KeyState
from ..values import Reply

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status)
        self.errors: Counter[str] = Counter()  # error rows and failed calls, by type
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.replies = 0
        self.retries = 0
        self.rejected = 0  # 503: the queue was full

    def request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def reply(self, reply: Reply, cost: float | None) -> None:
        self.replies += 1
        self.input_tokens += reply.usage.input_tokens or 0
        self.output_tokens += reply.usage.output_tokens or 0
        self.cost_usd += cost or 0.0

    def run(self, stats: RunStats) -> None:
        """A job's run is over: its calls (made by its own engine) count too."""
        self.replies += stats.written
        self.input_tokens += stats.input_tokens
        self.output_tokens += stats.output_tokens
        self.cost_usd += stats.cost_usd
        self.retries += stats.retries
        self.errors.update(stats.errors_by_code)

    def error(self, code: str) -> None:
        self.errors[code] += 1

    def retry(self, error: object) -> None:
        self.retries += 1

    def render(self, keys: Iterable[KeyState], pending: int) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        metric(
            "llmrun_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
            (
                (f'{{route="{_label(route)}",status="{status}"}}', n)
                for (route, status), n in sorted(self.requests.items())
            ),
        )
        metric("llmrun_calls_total", "counter", "Provider replies received.", [("", self.replies)])
        metric(
            "llmrun_tokens_total",
            "counter",
            "Tokens reported by the provider.",
            [('{kind="input"}', self.input_tokens), ('{kind="output"}', self.output_tokens)],
        )
        metric("llmrun_cost_usd_total", "counter", "Spend in USD.", [("", self.cost_usd)])
        metric(
            "llmrun_errors_total",
            "counter",
            "Failed calls and error rows, by type.",
            ((f'{{type="{_label(code)}"}}', n) for code, n in sorted(self.errors.items())),
        )
        metric("llmrun_retries_total", "counter", "Attempts retried.", [("", self.retries)])
        metric(
            "llmrun_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            [("", self.rejected)],
        )
        metric("llmrun_pending_calls", "gauge", "Calls running or queued.", [("", pending)])
        states = list(keys)
        metric(
            "llmrun_key_requests_per_minute",
            "gauge",
            "The pace each key is held to (0: no limit known), by key fingerprint.",
            ((f'{{key="{s.name}"}}', _pace(s)) for s in states),
        )
        metric(
            "llmrun_key_in_flight",
            "gauge",
            "Requests out on each key.",
            ((f'{{key="{s.name}"}}', s.in_flight) for s in states),
        )
        metric(
            "llmrun_key_retired",
            "gauge",
            "1 when the key was retired (rejected by the provider).",
            ((f'{{key="{s.name}"}}', int(s.retired is not None)) for s in states),
        )
        return "\n".join(lines) + "\n"


def _pace(state: KeyState) -> float:
    """The tighter of the configured and the learnt request pace, per minute."""
    rates = [p.per_minute for p in (state.requests, state.learnt) if p.per_minute]
    return min(rates) if rates else 0.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
