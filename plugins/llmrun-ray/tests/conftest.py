"""One local Ray cluster for the session, on 127.0.0.1 only, with usage statistics off; and what
the tests share: recipe files, the real `llmrun-ray` command, a server-side rate limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Only this plugin loads, in every process of a job (driver, workers, actors), as the other
# plugins' suites do: with llmrun-wandb installed beside it, each driver also started W&B's
# observer (half a second of CPU), which is not what these tests are about.
os.environ["LLMRUN_PLUGINS"] = "ray"
# The limiter actors outlive the job that started them (other jobs on the same keys share
# them) until idle this long: 20 s here, so a test's actors are gone a few tests later. 3 s was
# shorter than a loaded machine takes to start a job's workers: a restarted driver's limiter
# ended itself before the workers' first call (seen in CI).
os.environ["LLMRUN_RAY_IDLE_S"] = "20"
# A one-machine cluster: every Ray process binds and advertises 127.0.0.1 (Ray otherwise looks up
# the address other machines would reach this one at).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray

from llmrun.testing.fake_openai import Fault, RecordedRequest


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """The address of a 2-CPU Ray cluster started by this process (and stopped with it)."""
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def reviews(n: int) -> list[dict[str, Any]]:
    # Prompts of a few hundred characters, as a real labelling job's.
    body = "The battery lasts two days, the screen is bright, but the speaker rattles. " * 4
    return [{"id": f"r{i:05d}", "text": f"{body} (review {i})"} for i in range(n)]


CLI = [sys.executable, "-c", "import sys; from llmrun_ray.cli import main; sys.exit(main())"]


def recipe_file(tmp_path: Path, url: str, n: int, run: str, keys: str = "[k1]") -> Path:
    write_jsonl(tmp_path / "data.jsonl", reviews(n))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""\
name: ray-test
data: {{loader: jsonl, path: data.jsonl, id: id}}
prompt: "Sentiment of this review, one word: {{{{ text }}}}"
provider: {{name: openai, base_url: "{url}", model: fake-model, api_keys: {keys}}}
run: {run}
prices:
  fake-model: {{input: 1000, output: 1000}}
output: {{path: out/labels.jsonl}}
""",
        encoding="utf-8",
    )
    return recipe


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real `llmrun-ray` command."""
    return run_command([*CLI, *args], timeout)


def llmrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real `llmrun` command (with `run.engine: ray` or `--engine ray`)."""
    return run_command([sys.executable, "-m", "llmrun", *args], timeout)


def run_command(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def ids_once(rows: list[dict[str, Any]], n: int) -> None:
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"r{i:05d}" for i in range(n)], "every id exactly once"


class Bucket:
    """The server's own limit: ``rate`` requests/s with a burst of ``burst`` (token bucket);
    a request past it gets a 429, as a provider answers."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = burst
        self.at = time.monotonic()
        self.refused = 0
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Fault | None:
        with self.lock:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
            if self.level < 1:
                self.refused += 1
                return Fault(status=429)
            self.level -= 1
            return None


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most
