"""Rate limits: does llmrun use what a limit allows, without 429s?

Three scenarios, each the real `llmrun run` CLI against the fake OpenAI server (in this
process, on 127.0.0.1) enforcing a limit itself (``llmrun.testing.limits.ServerLimit``: token
buckets refilling continuously, starting full, holding 1 s of the limit):

- ``requests``: server limit R requests/min (announced with x-ratelimit-* headers), the recipe's
  ``run.requests_per_minute`` = R. Target: over the first 60 s, achieved within 2% of R, and
  zero 429s.
- ``tokens``: server limit T tokens/min, the recipe's ``run.tokens_per_minute`` = T (llmrun
  estimates each request before sending and corrects with the reported usage). Target: tokens
  the server admitted in the first 60 s within 2% of T, zero 429s.
- ``adaptive``: server limit R requests/min (``--adaptive-limit``, 6,000 unless set),
  unannounced (no headers, bare 429s), the recipe sets no limit and ``run.adaptive: true``
  (written out: this loopback server stands for a remote provider, and by default a local
  endpoint gets no slow start). Target: >= 90% of R over 60 s after the first request, < 1% of
  requests answered 429.
- ``adaptive-retry-after``: the same, but each 429 carries ``Retry-After`` (whole seconds) as
  gateways without rate-limit headers send it. Same target.

- ``noise-1`` and ``noise-7.5``: no limit at all, but 1% (7.5%) of the requests refused at
  random with 429 ``Retry-After: 1`` whatever the pace (an overloaded provider, a gateway);
  3,000 records, concurrency 64, 20 ms latency, the recipe's defaults. Measured: requests per
  second, first request to last answer (on the server), against the same job without faults
  (run just before), as the issue words the target; the median of five fault draws (seeds).
  Also shown: records per second, and each draw against its bound (each record first sent when
  the fault-free job sent it, each retry the moment its Retry-After ends; a run ends with its
  unluckiest record). Target: >= 50% (1%) and >= 30% (7.5%) of fault-free requests/s.

  Why requests/s, not records/s, decides: the target is worded in requests/s, and it is the
  pace, which is what the scenario tests (a steady share of refusals must not lower it).
  Records/s is set by the draw's unluckiest record: at 7.5% about one record in a run is
  refused three times, and its three seconds of Retry-After weigh three times the fault-free
  job (1.1 s), so the bound in records/s is 27-37% depending on the draw, under 30% for three
  draws of five, whatever the client. Both figures are printed.

- ``endpoints``: ``provider.base_urls`` with two fake servers against one, the same recipe
  (``run.requests_per_minute: 3000``, 2,000 records, concurrency 64, 20 ms): the limit applies
  to each endpoint. Measured: records per second (first request to last answer, on the
  servers). Target: two endpoints >= 1.8 x one.

``--realistic``: the noise and endpoints jobs send realistic records instead of the issue's
short rows (reviews of 200-1,200 characters with a few fields, rendered by the Jinja template of
``benchmarks/run.py``'s realistic scenario) over HTTPS (a certificate made for the run with
trustme, trusted through ``SSL_CERT_FILE``); the same targets.

Usage: ``python benchmarks/rate_limits.py [--only requests|tokens|adaptive|adaptive-retry-after|
noise-1|noise-7.5|endpoints] [--window 60] [--adaptive-limit R] [--realistic]``.
Prints a table and one JSON line per scenario; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest
from llmrun.testing.limits import ServerLimit, request_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TEMPLATE, realistic_record

LATENCY_S = 0.05
CONCURRENCY = 64
SCENARIOS = ["requests", "tokens", "adaptive", "adaptive-retry-after"]


class Wire:
    """What the noise and endpoints jobs send and how: the issue's short rows over HTTP, or
    (``realistic``) review records through a Jinja template over HTTPS, with a certificate
    made for this run (its CA file in ``folder``, trusted by llmrun through SSL_CERT_FILE)."""

    def __init__(self, realistic: bool = False, folder: Path | None = None) -> None:
        self.realistic = realistic
        self.env: dict[str, str] | None = None
        self.context: ssl.SSLContext | None = None
        if realistic:
            import trustme

            assert folder is not None
            authority = trustme.CA()
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            authority.issue_cert("127.0.0.1").configure_cert(self.context)
            authority.cert_pem.write_to_path(str(folder / "ca.pem"))
            self.env = {**os.environ, "SSL_CERT_FILE": str(folder / "ca.pem")}

    def server(self, **options: Any) -> FakeOpenAI:
        return FakeOpenAI(tls=self.context, **options)


SHORT = Wire()


def write_job(folder: Path, url: str, n: int, run: dict[str, Any], realistic: bool = False) -> Path:
    with open(folder / "data.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            if realistic:
                row = realistic_record(i)
            else:
                row = {"id": f"r{i:07d}", "text": f"record number {i} says hello"}
            fh.write(json.dumps(row))
            fh.write("\n")
    recipe = {
        "name": "rate-bench",
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": {"system": "You are terse.", "user": TEMPLATE if realistic else "{{ text }}"},
        "provider": {"name": "openai", "base_url": url, "model": "fake-model"},
        "generation": {"max_tokens": 16},
        "run": {"concurrency": CONCURRENCY, "max_retries": 50, **run},
        "output": {"path": "out.jsonl"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def llmrun(recipe: Path, env: dict[str, str] | None = None) -> float:
    script = Path(sys.executable).parent / "llmrun"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]
    started = time.monotonic()
    subprocess.run(
        [*command, "run", str(recipe), "--quiet"], check=True, cwd=recipe.parent, env=env
    )
    return time.monotonic() - started


NOISE_RECORDS = 3000
NOISE_LATENCY_S = 0.02


def noise_job(
    share: float, seed: int = 15, clean: dict[str, float] | None = None, wire: Wire = SHORT
) -> tuple[float, float, int, int, dict[str, float], float]:
    """Records per second (first request to last answer, on the server); the records per
    second of the bound for this run's faults: each record first sent when the fault-free run
    (``clean``) sent it, each retry the moment its ``Retry-After`` ended; 429s; requests; when
    each record was first sent (from the first request); requests per second."""
    rng = random.Random(seed)
    lock = threading.Lock()
    refused: set[int] = set()

    def fault(request: RecordedRequest) -> Fault | None:
        with lock:
            if rng.random() < share:
                refused.add(id(request))
                return Fault(429, {"retry-after": "1"})
        return None

    with (
        tempfile.TemporaryDirectory() as tmp,
        wire.server(latency_s=NOISE_LATENCY_S, fault=fault if share else None) as fake,
    ):
        recipe = write_job(Path(tmp), fake.url, NOISE_RECORDS, {}, wire.realistic)
        # The recipe's defaults: concurrency 64 set above, nothing else about pace or retries.
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        data["run"] = {"concurrency": CONCURRENCY}
        recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        llmrun(recipe, wire.env)
        requests = list(fake.requests)
        rows = [json.loads(line) for line in (Path(tmp) / "out.jsonl").open(encoding="utf-8")]
    ok = sum(1 for r in rows if r["status"] == "ok")
    t0 = min(r.received_at for r in requests)
    span = max(r.received_at for r in requests) + NOISE_LATENCY_S - t0
    first: dict[str, float] = {}
    refusals: dict[str, int] = {}
    for r in requests:
        text = r.body["messages"][-1]["content"]
        first.setdefault(text, r.received_at - t0)
        refusals[text] = refusals.get(text, 0) + (id(r) in refused)
    # A 429 comes back at once: each refusal costs exactly the Retry-After, the last answer
    # its latency.
    start = clean if clean is not None else first
    bound = max(start[k] + refusals[k] * 1.0 for k in first) + NOISE_LATENCY_S
    return ok / span, ok / bound, len(refused), len(requests), first, len(requests) / span


NOISE_SEEDS = 5


def noise_scenario(name: str, wire: Wire = SHORT) -> dict[str, Any]:
    """The median over NOISE_SEEDS fault draws: a run ends with its unluckiest record (one
    refused three times at 7.5% ends a second later than one refused twice), so one draw says
    more about the draw than about llmrun."""
    share = float(name.removeprefix("noise-")) / 100
    clean, _, _, _, sent, clean_requests = noise_job(0.0, wire=wire)
    runs = [noise_job(share, seed, sent, wire) for seed in range(15, 15 + NOISE_SEEDS)]
    # The median draw by requests/s, the figure that decides.
    median = sorted(runs, key=lambda r: r[5])[len(runs) // 2]
    rate, _, refused, requests, _, request_rate = median
    target = 0.5 if share <= 0.01 else 0.3
    return {
        "scenario": name,
        "limit_per_min": 0.0,
        "unit": "requests/s",
        "achieved_per_min": round(request_rate * 60, 1),
        "ratio": round(request_rate / clean_requests, 4),
        "ratios": [round(r[5] / clean_requests, 4) for r in runs],
        "records_ratio": round(rate / clean, 4),
        "records_ratios": [round(r[0] / clean, 4) for r in runs],
        "bound_ratios": [round(r[1] / clean, 4) for r in runs],
        "of_bound": [round(r[0] / r[1], 4) for r in runs],
        "fault_free_per_s": round(clean_requests, 1),
        "per_s": round(request_rate, 1),
        "records_per_s": round(rate, 1),
        "requests": requests,
        "answered_429": refused,
        "share_429": round(refused / requests, 5),
        "records": NOISE_RECORDS,
        "wall_s": None,
        "target": f">= {100 * target:.0f}% of fault-free requests/s (median of {NOISE_SEEDS})",
        "met": request_rate / clean_requests >= target,
    }


def endpoints_job(count: int, records: int = 2000, wire: Wire = SHORT) -> float:
    """Records per second over ``count`` endpoints at run.requests_per_minute 3,000."""
    servers = [wire.server(latency_s=NOISE_LATENCY_S).start() for _ in range(count)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = {"requests_per_minute": 3000}
            recipe = write_job(Path(tmp), servers[0].url, records, run, wire.realistic)
            data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
            data["provider"]["base_urls"] = [s.url for s in servers]
            recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            llmrun(recipe, wire.env)
        times = [r.received_at for s in servers for r in s.requests]
    finally:
        for server in servers:
            server.stop()
    return records / (max(times) + NOISE_LATENCY_S - min(times))


def endpoints_scenario(wire: Wire = SHORT) -> dict[str, Any]:
    one = endpoints_job(1, wire=wire)
    two = endpoints_job(2, wire=wire)
    return {
        "scenario": "endpoints",
        "limit_per_min": 3000.0,
        "unit": "records/s",
        "achieved_per_min": round(two * 60, 1),
        "ratio": round(two / one, 4),
        "fault_free_per_s": round(one, 1),
        "per_s": round(two, 1),
        "requests": 2000,
        "answered_429": 0,
        "share_429": 0.0,
        "records": 2000,
        "wall_s": None,
        "target": ">= 1.8 x one endpoint",
        "met": two / one >= 1.8,
    }


def scenario(
    name: str, window: float, adaptive_limit: float = 6000.0, wire: Wire = SHORT
) -> dict[str, Any]:
    if name.startswith("noise-"):
        return noise_scenario(name, wire)
    if name == "endpoints":
        return endpoints_scenario(wire)
    per_request_tokens = request_tokens(
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "record number 0 says hello"},
            ],
            "max_tokens": 16,
        }
    )
    if name == "requests":
        limit_per_min = 1200.0
        server = ServerLimit(requests_per_minute=limit_per_min, latency_s=LATENCY_S)
        run: dict[str, Any] = {"requests_per_minute": limit_per_min}
        per_min_requests = limit_per_min
    elif name == "tokens":
        limit_per_min = 30_000.0
        server = ServerLimit(tokens_per_minute=limit_per_min, latency_s=LATENCY_S)
        run = {"tokens_per_minute": limit_per_min}
        per_min_requests = limit_per_min / per_request_tokens
    else:
        limit_per_min = adaptive_limit
        server = ServerLimit(
            requests_per_minute=limit_per_min,
            latency_s=LATENCY_S,
            announce=False,
            retry_after=name == "adaptive-retry-after",
        )
        run = {"adaptive": True}
        per_min_requests = limit_per_min
    # Enough records to keep the client busy past the window.
    n = int(per_min_requests * (window + 10) / 60)
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(fault=server.check) as fake:
        wall = llmrun(write_job(Path(tmp), fake.url, n, run))
        total_requests = fake.count()
    times = [t for t, _ in server.admitted]
    t0 = min(times)
    in_window = [(t, k) for t, k in server.admitted if t0 <= t < t0 + window]
    if name == "tokens":
        achieved = sum(k for _, k in in_window) * 60.0 / window
    else:
        achieved = len(in_window) * 60.0 / window
    ratio = achieved / limit_per_min
    share_429 = server.limited / total_requests
    if name.startswith("adaptive"):
        met = ratio >= 0.90 and share_429 < 0.01
        target = ">= 90% of the limit, < 1% 429s"
    else:
        met = abs(ratio - 1) <= 0.02 and server.limited == 0
        target = "within 2% of the limit, no 429"
    return {
        "scenario": name,
        "limit_per_min": limit_per_min,
        "unit": "tokens" if name == "tokens" else "requests",
        "achieved_per_min": round(achieved, 1),
        "ratio": round(ratio, 4),
        "requests": total_requests,
        "answered_429": server.limited,
        "share_429": round(share_429, 5),
        "records": n,
        "wall_s": round(wall, 1),
        "target": target,
        "met": met,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SCENARIOS, "noise-1", "noise-7.5", "endpoints"],
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--adaptive-limit", type=float, default=6000.0, help="the unannounced limit, requests/min"
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="noise and endpoints: realistic records over HTTPS instead of short rows over HTTP",
    )
    args = parser.parse_args()
    names = args.only or [*SCENARIOS, "noise-1", "noise-7.5", "endpoints"]
    with tempfile.TemporaryDirectory() as folder:
        wire = Wire(args.realistic, Path(folder))
        results = [scenario(name, args.window, args.adaptive_limit, wire) for name in names]
    print("| scenario | limit /min | achieved /min | ratio | 429s | requests | target | met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r["scenario"] == "endpoints":
            print(
                f"| endpoints | 3,000 requests/min each | one: {r['fault_free_per_s']:,.1f}, "
                f"two: {r['per_s']:,.1f} records/s | {r['ratio']:.2f}x | 0 | 2,000 | "
                f"{r['target']} | {'yes' if r['met'] else 'NO'} |"
            )
            continue
        if r["scenario"].startswith("noise-"):
            print(
                f"| {r['scenario']} | none (fault-free: {r['fault_free_per_s']:,.1f} requests/s) | "
                f"{r['per_s']:,.1f} requests/s | {100 * r['ratio']:.1f}% | "
                f"{r['answered_429']} ({100 * r['share_429']:.2f}%) | {r['requests']:,} | "
                f"{r['target']} | {'yes' if r['met'] else 'NO'} |"
            )
            print(
                f"|   {r['scenario']} per draw | | requests/s "
                + ", ".join(f"{100 * x:.1f}%" for x in r["ratios"])
                + "; records/s "
                + ", ".join(f"{100 * x:.1f}%" for x in r["records_ratios"])
                + " of fault-free, "
                + ", ".join(f"{100 * x:.0f}%" for x in r["of_bound"])
                + " of the bound | | | | | |"
            )
            continue
        print(
            f"| {r['scenario']} | {r['limit_per_min']:,.0f} {r['unit']} | "
            f"{r['achieved_per_min']:,.1f} | {100 * r['ratio']:.1f}% | "
            f"{r['answered_429']} ({100 * r['share_429']:.2f}%) | {r['requests']:,} | "
            f"{r['target']} | {'yes' if r['met'] else 'NO'} |"
        )
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
