"""llmrun-wandb: log llmrun runs to Weights & Biases.

An observer plugin (the ``run_started``, ``record_done`` and ``run_finished`` hooks), registered
through the ``llmrun`` entry point. During a run it logs, every few seconds, the rows done, ok
and in error (by type), throughput, tokens, cost and retries; at the end, the run's summary and
the tables of ``llmrun report`` (errors by type, latency percentiles, the slowest, most expensive
and failed rows). wandb is imported when a run starts, never when plugins are listed.

Settings come from the environment, as wandb's own do: ``WANDB_PROJECT`` (default ``llmrun``),
``WANDB_ENTITY``, ``WANDB_MODE`` (``offline`` keeps the run in ``./wandb`` for a later
``wandb sync``), ``WANDB_DIR``; ``LLMRUN_WANDB=0`` turns the plugin off for one run;
``LLMRUN_WANDB_EVERY_S`` is the logging interval (default 5).
"""

from __future__ import annotations

from llmrun import Row, RunEnd, RunStart, hookimpl

from .session import Session

__version__ = "0.1.0"
__all__ = ["Session", "__version__"]
LLMRUN_API = ">=1"  # the typed RunStart / Row / RunEnd values

_session: Session | None = None


@hookimpl
def run_started(run: RunStart) -> None:
    global _session
    _session = Session.start(run)


@hookimpl
def record_done(row: Row) -> None:
    if _session is not None:
        _session.row(row)


@hookimpl
def run_finished(summary: RunEnd) -> None:
    global _session
    session, _session = _session, None
    if session is not None:
        session.finish(summary)
