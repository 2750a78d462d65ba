"""Streaming between steps: ``python benchmarks/steps.py`` (benchmarks/README.md).

The real CLI against the fake server (each pinned to its own core, as in run.py), on the
realistic prompts of cache.py (a 370-character system prompt, a user message rendered from a
template over records with a 500-character review). Two recipes over the same records:

- ``one step``: the labelling prompt, one call per record;
- ``two steps``: that prompt as the step ``label``, then a step ``check`` whose prompt renders
  the review and the first step's answer (two calls per record).

Per run: requests/s (requests sent / the summary's ``elapsed_s``). Issue 19's target: two
steps reach at least 0.9x the requests/s of one. And whether the steps stream: the second
step's first call started before the first step's last call finished (from the
``started_at``/``finished_at`` each step has in the row), with how much of the run they
overlapped. Rounds alternate the two recipes, so a slower machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cache import SYSTEM, USER, records  # noqa: E402
from run import fake_server, run_client  # noqa: E402

CHECK = (
    "Review {{ id }}:\n{{ text }}\n\nA labeller answered: {{ steps.label.text }}\n"
    "Is that label right? Answer yes or no, then the corrected JSON object."
)


def recipe(root: Path, name: str, url: str, concurrency: int, two: bool) -> Path:
    data: dict[str, Any] = {
        "name": name,
        "data": {"path": "data.jsonl", "id": "id"},
        "provider": {
            "name": "openai",
            "base_url": url,
            "model": "fake-model",
            "api_keys": ["sk-bench-0123456789"],
        },
        "generation": {"temperature": 0, "max_tokens": 64},
        "run": {"concurrency": concurrency, "adaptive": False},
        "output": {"path": "out/placeholder.jsonl"},
    }
    if two:
        data["steps"] = [
            {"name": "label", "prompt": {"system": SYSTEM, "user": USER}},
            {"name": "check", "prompt": {"system": SYSTEM, "user": CHECK}},
        ]
    else:
        data["prompt"] = {"system": SYSTEM, "user": USER}
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    return path


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def overlap(rows_path: Path) -> dict[str, float]:
    """When the second step first started and the first step last finished, from the rows."""
    first_end, second_start, start, end = 0.0, float("inf"), float("inf"), 0.0
    with open(rows_path, encoding="utf-8") as fh:
        for line in fh:
            steps = json.loads(line)["steps"]
            label, check = steps["label"], steps["check"]
            first_end = max(first_end, when(label["finished_at"]))
            second_start = min(second_start, when(check["started_at"]))
            start = min(start, when(label["started_at"]))
            end = max(end, when(check["finished_at"]))
    return {
        "second_step_first_start_s": second_start - start,
        "first_step_last_end_s": first_end - start,
        "run_s": end - start,
    }


def scenario(
    root: Path, label: str, n: int, concurrency: int, latency_s: float, rounds: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    env = dict(os.environ, LLMRUN_PLUGINS="", PYTHONUNBUFFERED="1")
    with fake_server(latency_s, root) as server:
        paths = {
            "one step": recipe(root, f"{label}-one", server["url"], concurrency, False),
            "two steps": recipe(root, f"{label}-two", server["url"], concurrency, True),
        }
        runs = 0
        for rnd in range(rounds):
            for config, path in paths.items():
                runs += 1
                out = f"out/run-{runs}.jsonl"
                argv = [sys.executable, "-m", "llmrun", "run", str(path), "--quiet", "--json"]
                argv += ["--set", f"output.path={out}", "--limit", str(n)]
                try:
                    report, measured = run_client(argv, root, env)
                    if report.get("status") != "completed" or report.get("ok") != n:
                        raise RuntimeError(f"llmrun did not complete: {report}")
                    calls = n * (2 if config == "two steps" else 1)
                    result = {
                        "scenario": label,
                        "config": config,
                        "round": rnd,
                        "records": n,
                        "requests": calls,
                        "req_s": calls / report["elapsed_s"],
                        "cpu_s": measured["cpu_s"],
                    }
                    if config == "two steps":
                        result.update(overlap(root / out))
                finally:
                    shutil.rmtree(root / "out", ignore_errors=True)
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for label in dict.fromkeys(r["scenario"] for r in results):
        mine = [r for r in results if r["scenario"] == label]
        one = statistics.median(r["req_s"] for r in mine if r["config"] == "one step")
        two_rows = [r for r in mine if r["config"] == "two steps"]
        two = statistics.median(r["req_s"] for r in two_rows)
        ratios = []
        for rnd in sorted({r["round"] for r in mine}):
            a = next(r for r in mine if r["round"] == rnd and r["config"] == "one step")
            b = next(r for r in mine if r["round"] == rnd and r["config"] == "two steps")
            ratios.append(b["req_s"] / a["req_s"])
        lines.append(f"\n{label}\n")
        lines.append("| recipe | req/s (median) | two / one, per round |")
        lines.append("| --- | ---: | --- |")
        lines.append(f"| one step | {one:,.0f} | |")
        lines.append(f"| two steps | {two:,.0f} | {', '.join(f'{x:.2f}' for x in ratios)} |")
        starts = statistics.median(r["second_step_first_start_s"] for r in two_rows)
        ends = statistics.median(r["first_step_last_end_s"] for r in two_rows)
        total = statistics.median(r["run_s"] for r in two_rows)
        lines.append(
            f"\nstreaming: the second step's first call started {starts:.3f} s into the run, "
            f"the first step's last call ended at {ends:.3f} s (run {total:.2f} s)"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--records", type=int, default=10_000, help="throughput scenario")
    p.add_argument("--only", choices=["throughput", "latency"], action="append")
    args = p.parse_args()
    only = set(args.only or ["throughput", "latency"])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmrun-bench-steps-") as tmp:
        root = Path(tmp)
        (root / "data.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records(max(args.records, 5120))),
            encoding="utf-8",
        )
        if "throughput" in only:  # no latency: the client's CPU is the limit
            results += scenario(root, "throughput (C=64, 0 ms)", args.records, 64, 0.0, args.rounds)
        if "latency" in only:  # the round trip is the limit
            results += scenario(root, "latency (C=256, 200 ms)", 5120, 256, 0.2, args.rounds)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
