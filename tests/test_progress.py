"""Progress renderers, on a captured console (rich with a forced terminal, plain, none)."""

from __future__ import annotations

import io

from rich.console import Console

from llmrun.job.stats import RunStats
from llmrun.run.progress import PlainProgress, make_progress, status_line, summary_table


def stats_sample() -> RunStats:
    stats = RunStats(
        total=1000,
        resumed_ok=100,
        ok=390,
        error=10,
        input_tokens=12_000,
        output_tokens=3_000,
        started=100.0,
        clock=lambda: 110.0,
    )  # ten seconds into the run
    stats.errors_by_code["rate_limit"] = 7
    stats.errors_by_code["template"] = 3
    return stats


def test_rich_display_shows_counts_rates_errors_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = make_progress("auto", console)
    stats = stats_sample()
    progress.start("labels", stats)
    progress.update(stats)
    progress.log("warning: something to say")
    progress.stop(stats)
    text = out.getvalue()
    assert "labels" in text
    assert "500/1,000" in text  # done includes the resumed rows
    assert "40.0 req/s" in text  # 400 written in 10 s
    assert "1,500 tok/s" in text
    assert "10 errors" in text
    assert "ETA 0:13" in text  # 500 left at 40/s
    assert "warning: something to say" in text


def test_plain_mode_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=60)
    progress = make_progress("auto", console)
    assert isinstance(progress, PlainProgress)
    stats = stats_sample()
    progress.start("labels", stats)
    progress.update(stats)  # within the interval: no line
    progress.stop(stats)
    lines = out.getvalue().splitlines()
    assert lines[0] == "llmrun: labels: started"
    assert lines[-1] == f"llmrun: labels: {status_line(stats)}"  # one line, never wrapped
    assert len(lines) == 2


def test_quiet_prints_only_messages() -> None:
    out = io.StringIO()
    progress = make_progress("none", Console(file=out, force_terminal=True))
    stats = stats_sample()
    progress.start("labels", stats)
    progress.update(stats)
    progress.log("warning: kept")
    progress.stop(stats)
    assert out.getvalue().strip() == "warning: kept"


def test_summary_table_lists_errors_by_kind() -> None:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(
        summary_table("labels", stats_sample(), "completed", "out.jsonl")
    )
    text = out.getvalue()
    assert "labels (completed)" in text
    assert "500 of 1,000 done" in text
    assert "390 ok, 10 errors" in text
    assert "rate_limit" in text and "template" in text
    assert "12,000 in, 3,000 out" in text
