"""The plugin through the real `llmrun` command, W&B in offline mode: what the run logged is
read back from the offline run's files (see wandb_files.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .wandb_files import read_run

RECIPE = """\
name: wandb-test
data: {path: data.jsonl, id: id}
prompt: "Label: {{ text }}"
provider:
  name: mock
  model: gpt-4o-mini
  replies: [positive, negative]
  error_rate: 0.2
  error_status: 400
  latency_s: 0.01
run: {concurrency: 4, max_retries: 0}
output: {path: out.jsonl}
"""


def llmrun(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "llmrun"
    return subprocess.run(
        [str(script), *args],
        cwd=folder,
        env={**os.environ, "WANDB_DIR": str(folder), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def job(tmp_path: Path) -> Path:
    rows = [{"id": f"r{i:03d}", "text": f"review number {i}"} for i in range(120)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]


def test_the_offline_run_holds_the_metrics_and_the_report_tables(job: Path) -> None:
    proc = llmrun(job, "run", "recipe.yaml", "-q", LLMRUN_WANDB_EVERY_S="0.05")
    assert proc.returncode == 1, proc.stderr  # some error rows
    assert "raised" not in proc.stderr  # the observer never failed
    rows = _rows(job)
    errors = [r for r in rows if r["status"] == "error"]
    assert errors and len(rows) == 120
    (folder,) = (job / "wandb").glob("offline-run-*")
    run = read_run(folder)

    assert run["config"]["recipe"] == "wandb-test" and run["config"]["model"] == "gpt-4o-mini"
    history = [h for h in run["history"] if "rows/done" in h]
    # Logged during the run, not only at the end: the count grows step by step.
    done = [h["rows/done"] for h in history]
    assert len(done) >= 3 and done == sorted(done) and done[-1] == 120
    last = history[-1]
    assert last["rows/ok"] == 120 - len(errors)
    assert last["rows/error"] == len(errors)
    assert last["errors/invalid_request"] == len(errors)
    usage = [r["response"]["usage"] for r in rows if r["response"]]
    assert last["tokens/input"] == sum(u["input_tokens"] for u in usage)
    assert last["tokens/output"] == sum(u["output_tokens"] for u in usage)
    assert last["cost/usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
    assert last["throughput/mean_rows_per_s"] > 0
    assert run["summary"]["status"] == "completed"
    assert run["summary"]["report/rows"] == 120

    tables = {}
    for path in (folder / "files" / "media" / "table" / "report").glob("*.table.json"):
        tables[path.name.split("_")[0] if "errors" not in path.name else "errors_by_type"] = (
            json.loads(path.read_text())
        )
    assert set(tables) >= {"failed", "slowest", "costliest", "errors_by_type", "latency"}
    failed = tables["failed"]
    assert failed["columns"][:3] == ["line", "id", "status"]
    assert [row[1] for row in failed["data"]] == [r["id"] for r in errors][:15]
    assert tables["errors_by_type"]["data"] == [["invalid_request", len(errors)]]
    slowest = max(r["latency_s"] for r in rows if r["latency_s"] is not None)
    assert tables["slowest"]["data"][0][5] == slowest


def test_turned_off_for_a_run_it_makes_no_wandb_run(job: Path) -> None:
    proc = llmrun(job, "run", "recipe.yaml", "-q", LLMRUN_WANDB="0")
    assert proc.returncode == 1, proc.stderr
    assert not (job / "wandb").exists()


def test_a_failing_wandb_never_stops_the_run(job: Path) -> None:
    # An unusable mode makes wandb.init raise: llmrun reports the observer once, runs on.
    proc = llmrun(job, "run", "recipe.yaml", "-q", WANDB_MODE="no-such-mode")
    assert proc.returncode == 1, proc.stderr
    assert "observer wandb.run_started raised" in proc.stderr
    assert len(_rows(job)) == 120


def test_listed_as_an_installed_plugin() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "llmrun"), "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    listing = json.loads(proc.stdout)
    assert listing["failures"] == []
    # An observer registers no component: it is found by its entry point and hooks alone.
    assert "llmrun-wandb" not in {c["package"] for c in listing["components"]}
