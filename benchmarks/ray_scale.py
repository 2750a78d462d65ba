"""llmrun-ray on this machine: what a worker adds, what the limiter holds, what it costs.

Needs the ray plugin in the environment (``pip install ./plugins/llmrun-ray``). Starts a local
Ray cluster (2 CPUs, 127.0.0.1 only, usage statistics off) in this process; every run is the
real CLI (``llmrun run`` or ``llmrun-ray run --address ...``) on a generated recipe whose
prompts are a few hundred characters from a template.

    python benchmarks/ray_scale.py                      # all scenarios, about 10 minutes
    python benchmarks/ray_scale.py --only latency --records 8000

Scenarios (figures in benchmarks/README.md, "Ray"):
- latency: a 200 ms server; ``llmrun run`` (concurrency C) against ``llmrun-ray run
  --workers 2`` (concurrency C per worker), and ``llmrun run`` at 2C for comparison;
- cpu: the same with a 0 ms server: what the driver, the workers and the server (all on two
  cores) can do when nothing waits;
- limits: ``requests_per_minute: 600`` over 4 workers against a server that refuses past 600
  a minute (a token bucket holding 1 s, llmrun.testing.limits.ServerLimit) for 2.5 minutes:
  the most requests the server admitted in any 60 s window, and the 429s;
- endpoints: ``provider.base_urls`` with two servers, each refusing past 3,000 requests a
  minute, and ``run.requests_per_minute: 3000`` (per endpoint), over 2 workers, against the
  same recipe with one server: records/s, what each server admitted, and the 429s;
- limiter: the limiter actor alone: leases (acquire + release) per second it grants to
  tasks on both cores, with no limit set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind and advertise 127.0.0.1 only

import ray

from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.testing.limits import ServerLimit

BODY = "The battery lasts two days, the screen is bright, but the speaker rattles. " * 4
BIN = Path(sys.executable).parent


def write_recipe(folder: Path, url: str, n: int, run: str) -> Path:
    with (folder / "data.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i:08d}", "text": f"{BODY} (review {i})"}) + "\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"""\
name: ray-bench
data: {{loader: jsonl, path: data.jsonl, id: id}}
prompt:
  system: You label the sentiment of product reviews.
  user: "Review: {{{{ text }}}}\\nAnswer positive, negative or neutral."
provider: {{name: openai, base_url: "{url}", model: fake-model, api_keys: [sk-bench-1]}}
generation: {{temperature: 0, max_tokens: 16}}
run: {run}
output: {{path: out.jsonl}}
""",
        encoding="utf-8",
    )
    return recipe


def run_cli(args: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    summary["wall_s"] = round(wall, 2)
    return summary


def server_process(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmrun.testing.fake_openai",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--no-record",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def throughput(name: str, latency: float, n: int, concurrency: int, address: str) -> None:
    server, url = server_process(latency)
    try:
        rows = []
        for label, command, conc in (
            ("llmrun run, 1 process", ["llmrun", "run"], concurrency),
            ("llmrun run, 1 process, 2C", ["llmrun", "run"], 2 * concurrency),
            (
                "llmrun-ray run, 2 workers",
                ["llmrun-ray", "run", "--address", address, "--workers", "2"],
                concurrency,
            ),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                recipe = write_recipe(Path(tmp), url, n, f"{{concurrency: {conc}}}")
                exe = str(BIN / command[0])
                summary = run_cli([exe, *command[1:], str(recipe), "--quiet", "--json"])
            rate = summary["ok"] / summary["elapsed_s"]
            rows.append((label, conc, summary["ok"], summary["elapsed_s"], summary["wall_s"], rate))
        print(f"\n{name}: {n} records, server latency {latency * 1000:.0f} ms")
        print("| run | concurrency | ok | elapsed s | wall s | records/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, conc, ok, elapsed, wall, rate in rows:
            print(f"| {label} | {conc} | {ok} | {elapsed:.1f} | {wall:.1f} | {rate:,.0f} |")
        print(f"2 workers / 1 process at the same C: {rows[2][5] / rows[0][5]:.2f}x")
    finally:
        server.terminate()
        server.wait()


def limits(address: str, minutes: float) -> None:
    limit = ServerLimit(requests_per_minute=600, burst_s=1.0, latency_s=0.05)
    n = int(600 * minutes)
    with FakeOpenAI(fault=limit.check, record=False) as server, tempfile.TemporaryDirectory() as t:
        recipe = write_recipe(Path(t), server.url, n, "{concurrency: 16, requests_per_minute: 600}")
        summary = run_cli(
            [
                str(BIN / "llmrun-ray"),
                "run",
                "--address",
                address,
                "--workers",
                "4",
                str(recipe),
                "--quiet",
                "--json",
            ]
        )
    times = sorted(t for t, _ in limit.admitted)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 60.0:
            first += 1
        most = max(most, last - first + 1)
    print(f"\nlimits: requests_per_minute 600 over 4 workers, {n} records")
    print(f"admitted {limit.allowed}, refused (429) {limit.limited}, retries {summary['retries']}")
    print(f"most admitted in any 60 s window: {most} (limit 600)")
    print(f"ok {summary['ok']}, elapsed {summary['elapsed_s']:.1f} s")


def endpoints(address: str, seconds: float) -> None:
    """``provider.base_urls`` over 2 workers: two servers, each refusing past 3,000 requests a
    minute (its own bucket), and ``run.requests_per_minute: 3000``, which applies to each
    endpoint; the same recipe with the first server alone for comparison."""
    n = int(50 * seconds)  # what one endpoint takes in `seconds` at 3,000 a minute
    run = "{concurrency: 16, requests_per_minute: 3000}"
    rows = []
    for label, pool in (("one endpoint", 1), ("base_urls: two endpoints", 2)):
        limits = [ServerLimit(requests_per_minute=3000, burst_s=1.0, latency_s=0.02) for _ in "ab"]
        with (
            FakeOpenAI(fault=limits[0].check, record=False) as a,
            FakeOpenAI(fault=limits[1].check, record=False) as b,
            tempfile.TemporaryDirectory() as tmp,
        ):
            recipe = write_recipe(Path(tmp), a.url, n, run)
            if pool == 2:
                text = recipe.read_text(encoding="utf-8")
                recipe.write_text(
                    text.replace(f'base_url: "{a.url}"', f'base_urls: ["{a.url}", "{b.url}"]'),
                    encoding="utf-8",
                )
            command = [str(BIN / "llmrun-ray"), "run", "--address", address, "--workers", "2"]
            summary = run_cli([*command, str(recipe), "--quiet", "--json"])
        admitted = [limit.allowed for limit in limits[:pool]]
        refused = sum(limit.limited for limit in limits)
        rows.append((label, summary, admitted, refused, summary["ok"] / summary["elapsed_s"]))
    print(f"\nendpoints: {n} records, 2 workers, requests_per_minute 3000 per endpoint")
    print("| run | ok | elapsed s | wall s | records/s | admitted per endpoint | 429s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, summary, admitted, refused, rate in rows:
        each = " / ".join(f"{x:,}" for x in admitted)
        print(
            f"| {label} | {summary['ok']} | {summary['elapsed_s']:.1f} | {summary['wall_s']:.1f}"
            f" | {rate:,.1f} | {each} | {refused} |"
        )
    print(f"two endpoints / one: {rows[1][4] / rows[0][4]:.2f}x")


def limiter_load(seconds: float) -> None:
    from llmrun_ray.limiter import LimiterActor

    actor = LimiterActor.remote(1, {})

    @ray.remote(num_cpus=0.5)
    def hammer(limiter: Any, seconds: float, width: int) -> int:
        import asyncio

        from llmrun_ray.limiter import RemoteKeyPool

        async def one(pool: RemoteKeyPool, stop: float) -> int:
            done = 0
            while time.monotonic() < stop:
                lease = await pool.acquire(0)
                pool.on_success(lease, {})
                pool.release(lease, trusted=True)
                done += 1
            return done

        async def main() -> int:
            pool = RemoteKeyPool(limiter, ("k",))
            stop = time.monotonic() + seconds
            return sum(await asyncio.gather(*(one(pool, stop) for _ in range(width))))

        return asyncio.run(main())

    ray.get(actor.status.remote())
    started = time.monotonic()
    counts = ray.get([hammer.remote(actor, seconds, 32) for _ in range(2)])
    elapsed = time.monotonic() - started
    print(
        f"\nlimiter: {sum(counts)} leases in {elapsed:.1f} s = {sum(counts) / elapsed:,.0f}/s "
        "(a worker's acquire, success and release, 2 tasks x 32 concurrent)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", action="append", choices=["latency", "cpu", "limits", "endpoints", "limiter"]
    )
    p.add_argument("--records", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--minutes", type=float, default=2.5, help="length of the limits scenario")
    p.add_argument(
        "--endpoint-seconds",
        type=float,
        default=40.0,
        help="the endpoints scenario's length at one endpoint",
    )
    args = p.parse_args()
    only = set(args.only or ["latency", "cpu", "limits", "endpoints", "limiter"])
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = str(context.address_info["gcs_address"])
    print(f"ray {ray.__version__} at {address}")
    try:
        if "latency" in only:
            throughput("latency", 0.2, args.records, args.concurrency, address)
        if "cpu" in only:
            throughput("cpu", 0.0, args.records * 2, args.concurrency, address)
        if "limits" in only:
            limits(address, args.minutes)
        if "endpoints" in only:
            endpoints(address, args.endpoint_seconds)
        if "limiter" in only:
            limiter_load(10.0)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
