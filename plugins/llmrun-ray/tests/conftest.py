"""One local Ray cluster for the session, on 127.0.0.1 only, with usage statistics off."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# The limiter actors outlive the job that started them (other jobs on the same keys share
# them) until idle this long: 20 s here, so a test's actors are gone a few tests later. 3 s was
# shorter than a loaded machine takes to start a job's workers: a restarted driver's limiter
# ended itself before the workers' first call (seen in CI).
os.environ["LLMRUN_RAY_IDLE_S"] = "20"
# A one-machine cluster: every Ray process binds and advertises 127.0.0.1 (Ray otherwise looks up
# the address other machines would reach this one at).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray


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
