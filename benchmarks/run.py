"""llmrun's benchmarks: one command, ``python benchmarks/run.py`` (see benchmarks/README.md).

The fake OpenAI-compatible server (``python -m llmrun.testing.fake_openai``) runs as its own
process pinned to core 0; every client runs as its own process pinned to core 1 (``taskset``),
one at a time, the clients alternating within each round (the order rotates every round).
For each client process we measure:

- req/s: requests / the client's own loop time (first request to last reply, start-up
  excluded; for llmrun, read from its output rows: ``finished_at`` less ``latency_s``);
- req/s incl. start-up: requests / the process's wall time;
- CPU per request: user+sys of the process (``os.wait4``) less its start-up CPU, measured once
  per scenario by running the client on 1 record, divided by the requests; and the same
  without subtracting start-up;
- peak RSS: the process's ``ru_maxrss``.

Scenarios: ``throughput`` (20,000 records, C=64, server latency 0), ``latency`` (C=256 and
C=512 at 200 ms, 100 round trips of C records each) and ``memory`` (the ``mock`` provider over
10,000 and 1,000,000 realistic records). Results go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import GENERATION, MODEL, SYSTEM, TEMPLATE, record  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1
CLIENTS = (
    "llmrun",
    "llmrun-default",
    "llmrun-adaptive",
    "llmrun-asyncio",
    "raw-aiohttp",
    "raw-aiohttp-uvloop",
    "openai-sdk",
    "httpx-client",
    "httpx-transport",
    "aiohttp-transport",
    "http1-transport",
)
# The llmrun clients: run.adaptive false, left out (the default), and true written out.
LLMRUN_RECIPES: dict[str, bool | None] = {
    "llmrun": False,
    "llmrun-default": None,
    "llmrun-adaptive": True,
    "llmrun-asyncio": False,
}
# llmrun runs on uvloop where it is installed (llmrun/eventloop.py); this one on asyncio's loop,
# to show what the loop alone is worth. raw-aiohttp-uvloop is the hand-written loop on uvloop.
LLMRUN_LOOPS = {"llmrun-asyncio": "asyncio"}
SCRIPTS = {
    "raw-aiohttp": ["raw_aiohttp.py"],
    "raw-aiohttp-uvloop": ["raw_aiohttp.py", "--uvloop"],
    "openai-sdk": ["openai_sdk.py"],
    "httpx-client": ["httpx_client.py"],
    "httpx-transport": ["llmrun_transport.py", "--transport", "httpx"],
    "aiohttp-transport": ["llmrun_transport.py", "--transport", "aiohttp"],
    "http1-transport": ["llmrun_transport.py", "--transport", "http1"],
}
# Clients that collapse under load get a time budget instead of the whole record count, so a
# round stays short; their req/s and CPU per request are over the requests they did send.
SLOW = {"openai-sdk", "httpx-client", "httpx-transport"}
TARGET_THROUGHPUT_RATIO = 0.8
# Realistic rows (prompts of 200-1,200 characters from a template, records echoed into rows),
# over HTTP and TLS: llmrun ahead of the hand-written loop, not level with it (issue 14).
TARGET_REALISTIC_RATIO = 1.2
TARGET_LATENCY_RATIO = 0.95
TARGET_RSS_MB = 200.0
TARGET_RSS_GROWTH = 1.2


@dataclass
class Scenario:
    name: str
    kind: str  # throughput | latency | memory
    records: int
    concurrency: int
    latency_s: float = 0.0
    clients: tuple[str, ...] = CLIENTS
    slow_time_limit_s: float = 10.0
    realistic: bool = False  # the realistic-row records and template
    tls: bool = False  # the fake server speaks HTTPS with a self-signed certificate


@dataclass
class Measurement:
    client: str
    round: int
    requests: int
    ok: int
    errors: int
    loop_s: float
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ processes


def pinned(core: int, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset is None:
        sys.exit("taskset not found (util-linux): the benchmark pins server and client to cores")
    return [taskset, "-c", str(core), *argv]


@contextlib.contextmanager
def fake_server(
    latency_s: float, workdir: Path, certfile: Path | None = None
) -> Iterator[dict[str, Any]]:
    """The fake server on core 0; yields {"url"}, then holds {"requests"} it served."""
    stats_file = workdir / f"server-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "llmrun.testing.fake_openai", "--port", "0"]
    argv += ["--latency", str(latency_s), "--no-record", "--stats-file", str(stats_file)]
    if certfile is not None:
        argv += ["--certfile", str(certfile)]
    proc = subprocess.Popen(pinned(SERVER_CORE, argv), stdout=subprocess.PIPE, text=True)
    info: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline().strip() if ready else ""
        if not line.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
            raise RuntimeError(f"the fake server did not start (printed {line!r})")
        info["url"] = line
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError, ValueError):
            info["requests"] = json.loads(stats_file.read_text())["requests"]


def run_client(argv: list[str], workdir: Path, env: dict[str, str]) -> tuple[dict[str, Any], ...]:
    """Run one client pinned to core 1; (its JSON report, rusage numbers)."""
    out_path, err_path = workdir / "client.out", workdir / "client.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(pinned(CLIENT_CORE, argv), stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace").strip().splitlines()
    report: dict[str, Any] = {}
    for line in reversed(stdout):
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            break
    if proc.returncode not in (0, 1) or not report:
        tail = err_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"client {argv[1:3]} exited {proc.returncode}:\n{tail}")
    measured = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "exit_code": proc.returncode,
    }
    return report, measured


# ---------------------------------------------------------------------------- the clients


class Workspace:
    """A temporary folder with the data file and the recipes llmrun runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0
        self.env = dict(os.environ, LLMRUN_PLUGINS="", PYTHONUNBUFFERED="1")

    def data(self, n: int, realistic: bool = False) -> Path:
        path = self.root / f"data-{n}{'-realistic' if realistic else ''}.jsonl"
        if not path.exists():
            with open(path, "w", encoding="utf-8") as fh:
                chunk: list[str] = []
                for i in range(n):
                    chunk.append(json.dumps(record(i, realistic)) + "\n")
                    if len(chunk) == 10_000:
                        fh.write("".join(chunk))
                        chunk.clear()
                fh.write("".join(chunk))
        return path

    def recipe(
        self,
        name: str,
        data: Path,
        provider: dict[str, Any],
        concurrency: int,
        adaptive: bool | None = False,
        realistic: bool = False,
    ) -> Path:
        """``adaptive: false`` unless asked (the hand-written loops compared with llmrun pace
        nothing); ``None`` leaves the key out (the default: adaptive, no slow start on this
        loopback server), ``True`` writes it out (the slow start even here, as a remote
        endpoint without a limit has it)."""
        run: dict[str, Any] = {"concurrency": concurrency}
        if adaptive is not None:
            run["adaptive"] = adaptive
        recipe = {
            "name": name,
            "data": {"path": data.name, "id": "id"},
            "prompt": {"system": SYSTEM, "user": TEMPLATE if realistic else "{{ text }}"},
            "provider": provider,
            "generation": dict(GENERATION),
            "run": run,
            "output": {"path": "out/placeholder.jsonl"},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
        return path

    def llmrun(
        self, recipe: Path, limit: int | None, rows_window: bool = True, loop: str = "auto"
    ) -> dict[str, Any]:
        """Run llmrun's CLI on a fresh output; the report and measurements. Its loop time is
        read from the output rows (first request sent to last reply), like the other clients'
        loops; its summary's ``elapsed_s`` also counts opening and closing the run."""
        self.runs += 1
        out_dir = self.root / "out"
        argv = [sys.executable, "-m", "llmrun", "run", str(recipe), "--quiet", "--json"]
        argv += ["--set", f"output.path=out/run-{self.runs}.jsonl", "--loop", loop]
        if limit is not None:
            argv += ["--limit", str(limit)]
        try:
            report, measured = run_client(argv, self.root, self.env)
            window = request_window(out_dir / f"run-{self.runs}.jsonl") if rows_window else None
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        if report.get("status") != "completed":
            raise RuntimeError(f"llmrun did not complete: {report}")
        ok, errors = int(report["ok"]), int(report["error"])
        elapsed = float(report["elapsed_s"])
        return {
            "ok": ok,
            "errors": errors,
            "loop_s": window or elapsed,
            "extra": {"elapsed_s": elapsed, "request_window_s": window},
            **measured,
        }

    def script(
        self, client: str, url: str, n: int, c: int, time_limit: float, realistic: bool = False
    ) -> dict[str, Any]:
        script, *options = SCRIPTS[client]
        argv = [sys.executable, str(HERE / script), *options, "--url", url]
        argv += ["--records", str(n), "--concurrency", str(c)]
        if realistic:
            argv += ["--realistic", "--data", str(self.data(n, realistic))]
        if self.env.get("SSL_CERT_FILE"):
            argv += ["--cafile", self.env["SSL_CERT_FILE"]]
        if time_limit:
            argv += ["--time-limit", str(time_limit)]
        report, measured = run_client(argv, self.root, self.env)
        extra = {k: v for k, v in report.items() if k not in ("client", "ok", "errors")}
        extra.pop("elapsed_s", None)
        return {
            "ok": int(report["ok"]),
            "errors": int(report["errors"]),
            "loop_s": float(report["elapsed_s"]),
            "extra": extra,
            **measured,
        }


def self_signed(folder: Path) -> tuple[Path, str]:
    """(the server's key and chain, the CA file to trust) for 127.0.0.1, made with trustme."""
    import trustme

    authority = trustme.CA()
    server, ca = folder / "server.pem", folder / "ca.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    authority.cert_pem.write_to_path(str(ca))
    return server, str(ca)


def request_window(output: Path) -> float | None:
    """Seconds from the first request sent to the last reply, from llmrun's output rows
    (``finished_at`` less ``latency_s`` for the start of the successful attempt)."""
    first = last = None
    with contextlib.suppress(OSError), open(output, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("latency_s") is None:
                continue
            end = dt.datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00")).timestamp()
            start = end - row["latency_s"]
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    if first is None or last is None or last <= first:
        return None
    return last - first


def measure(
    ws: Workspace, sc: Scenario, client: str, url: str, recipe: Path, rnd: int, n: int
) -> Measurement:
    if client in LLMRUN_RECIPES:
        got = ws.llmrun(
            recipe, n if n != sc.records else None, loop=LLMRUN_LOOPS.get(client, "auto")
        )
    else:
        limit = sc.slow_time_limit_s if client in SLOW and n > 1 else 0.0
        got = ws.script(client, url, n, sc.concurrency, limit, sc.realistic)
    return Measurement(
        client=client,
        round=rnd,
        requests=got["ok"] + got["errors"],
        ok=got["ok"],
        errors=got["errors"],
        loop_s=got["loop_s"],
        wall_s=got["wall_s"],
        cpu_s=got["cpu_s"],
        maxrss_mb=got["maxrss_mb"],
        exit_code=got["exit_code"],
        extra=got.get("extra", {}),
    )


# --------------------------------------------------------------------------- the scenarios


def run_http_scenario(ws: Workspace, sc: Scenario, rounds: int, log: Any) -> dict[str, Any]:
    data = ws.data(sc.records, sc.realistic)
    startup: dict[str, list[Measurement]] = {c: [] for c in sc.clients}
    runs: list[Measurement] = []
    certfile = None
    ws.env.pop("SSL_CERT_FILE", None)
    if sc.tls:
        certfile, ws.env["SSL_CERT_FILE"] = self_signed(ws.root)
    with fake_server(sc.latency_s, ws.root, certfile) as server:
        provider = {
            "name": "openai",
            "base_url": server["url"],
            "model": MODEL,
            "api_keys": ["sk-bench-0123456789"],
        }
        recipes = {
            client: ws.recipe(
                f"bench-{sc.name}-{client}", data, provider, sc.concurrency, mode, sc.realistic
            )
            for client, mode in LLMRUN_RECIPES.items()
        }
        log(f"[{sc.name}] server {server['url']} (latency {sc.latency_s:g} s); start-up runs")
        for _ in range(3):  # start-up CPU: the same client on 1 record
            for client in sc.clients:
                chosen = recipes.get(client, recipes["llmrun"])
                startup[client].append(measure(ws, sc, client, server["url"], chosen, 0, 1))
        for rnd in range(1, rounds + 1):
            k = (rnd - 1) % len(sc.clients)
            order = sc.clients[k:] + sc.clients[:k]
            for client in order:
                chosen = recipes.get(client, recipes["llmrun"])
                m = measure(ws, sc, client, server["url"], chosen, rnd, sc.records)
                runs.append(m)
                log(
                    f"[{sc.name}] round {rnd} {client:17s} {m.requests / m.loop_s:9,.0f} req/s "
                    f"cpu {1e6 * m.cpu_s / m.requests:7,.0f} us/req (whole process) "
                    f"rss {m.maxrss_mb:6.1f} MB" + (f" errors {m.errors}" if m.errors else "")
                )
    sent = sum(m.requests for m in runs) + sum(m.requests for ms in startup.values() for m in ms)
    summary = summarize(sc, runs, startup)
    summary["server_requests"] = server.get("requests")
    summary["client_requests"] = sent
    return {
        "scenario": asdict(sc),
        "summary": summary,
        "startup": {c: [asdict(m) for m in ms] for c, ms in startup.items()},
        "runs": [asdict(m) for m in runs],
    }


def summarize(
    sc: Scenario, runs: list[Measurement], startup: dict[str, list[Measurement]]
) -> dict[str, Any]:
    med = statistics.median
    clients: dict[str, Any] = {}
    for client in sc.clients:
        ms = [m for m in runs if m.client == client]
        if not ms:
            continue
        start_cpu = med([m.cpu_s for m in startup[client]])
        clients[client] = {
            "req_s": med([m.requests / m.loop_s for m in ms]),
            "req_s_process": med([m.requests / m.wall_s for m in ms]),
            "cpu_us_per_req": med([1e6 * max(0.0, m.cpu_s - start_cpu) / m.requests for m in ms]),
            "cpu_us_per_req_whole": med([1e6 * m.cpu_s / m.requests for m in ms]),
            "startup_cpu_s": start_cpu,
            "maxrss_mb": max(m.maxrss_mb for m in ms),
            "requests": med([m.requests for m in ms]),
            "errors": sum(m.errors for m in ms),
            "rounds": len(ms),
        }
    out: dict[str, Any] = {"clients": clients}
    if "llmrun" in clients and "raw-aiohttp" in clients:
        by_round = {(m.client, m.round): m for m in runs}
        ratios = [
            (lr.requests / lr.loop_s) / (rr.requests / rr.loop_s)
            for r in {m.round for m in runs}
            if (lr := by_round.get(("llmrun", r))) and (rr := by_round.get(("raw-aiohttp", r)))
        ]
        out["llmrun_vs_raw"] = med(ratios)
        out["llmrun_vs_raw_by_round"] = ratios
    if sc.kind == "throughput":
        ratio = out.get("llmrun_vs_raw")
        want = TARGET_REALISTIC_RATIO if sc.realistic else TARGET_THROUGHPUT_RATIO
        out["target"] = f"llmrun >= {want} x raw aiohttp"
        out["pass"] = None if ratio is None else ratio >= want
    elif sc.kind == "latency" and "llmrun" in clients:
        ideal = sc.concurrency / sc.latency_s
        out["ideal_req_s"] = ideal
        out["llmrun_vs_ideal"] = clients["llmrun"]["req_s"] / ideal
        out["target"] = (
            f"llmrun >= {TARGET_LATENCY_RATIO} x C/L = {TARGET_LATENCY_RATIO * ideal:,.0f}"
        )
        out["pass"] = out["llmrun_vs_ideal"] >= TARGET_LATENCY_RATIO
    return out


def run_memory_scenario(
    ws: Workspace, small: int, large: int, concurrency: int, log: Any
) -> dict[str, Any]:
    provider = {"name": "mock", "latency_s": 0}
    results: dict[str, Any] = {}
    runs: list[Measurement] = []
    for n in (small, large):
        # Realistic rows (reviews of 150-450 characters rendered by a template, the row echoing
        # fields): with short rows the 10^6-record figure was a toy's (session 13's review).
        data = ws.data(n, realistic=True)
        recipe = ws.recipe(f"memory-{n}", data, provider, concurrency, realistic=True)
        log(f"[memory] llmrun, mock provider, {n:,} realistic records ...")
        got = ws.llmrun(recipe, None, rows_window=False)
        m = Measurement(
            "llmrun",
            1,
            got["ok"] + got["errors"],
            got["ok"],
            got["errors"],
            got["loop_s"],
            got["wall_s"],
            got["cpu_s"],
            got["maxrss_mb"],
            got["exit_code"],
        )
        runs.append(m)
        log(
            f"[memory] {n:>9,} records: peak RSS {m.maxrss_mb:6.1f} MB, {m.wall_s:6.1f} s, "
            f"{m.requests / m.loop_s:,.0f} req/s"
        )
        results[str(n)] = {
            "records": n,
            "maxrss_mb": m.maxrss_mb,
            "wall_s": m.wall_s,
            "req_s": m.requests / m.loop_s,
            "cpu_us_per_req_whole": 1e6 * m.cpu_s / m.requests,
        }
    ratio = results[str(large)]["maxrss_mb"] / results[str(small)]["maxrss_mb"]
    rss = results[str(large)]["maxrss_mb"]
    summary = {
        "small": results[str(small)],
        "large": results[str(large)],
        "ratio": ratio,
        "target": f"{large:,} records: peak RSS <= {TARGET_RSS_MB:g} MB and <= "
        f"{TARGET_RSS_GROWTH} x the {small:,}-record run",
        "pass": rss <= TARGET_RSS_MB and ratio <= TARGET_RSS_GROWTH,
        "at_target_size": large >= 1_000_000,
    }
    return {
        "scenario": {"name": "memory", "kind": "memory", "concurrency": concurrency},
        "summary": summary,
        "runs": [asdict(m) for m in runs],
    }


# ------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("llmrun", "aiohttp", "httpx", "httpcore", "openai", "anyio", "yarl", "uvloop"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "llmrun"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "llmrun_commit": commit + ("+dirty" if dirty else ""),
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def table(result: dict[str, Any]) -> str:
    sc, s = result["scenario"], result["summary"]
    if sc["kind"] == "memory":
        rows = [
            "| records | peak RSS | wall | req/s |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for part in (s["small"], s["large"]):
            rows.append(
                f"| {part['records']:,} | {part['maxrss_mb']:.1f} MB | {part['wall_s']:.1f} s "
                f"| {part['req_s']:,.0f} |"
            )
        head = (
            f"**memory** (llmrun, `mock` provider, C={sc['concurrency']}): ratio "
            f"{s['ratio']:.2f}; target {s['target']}: **{verdict(s['pass'])}**"
        )
        return head + "\n\n" + "\n".join(rows)
    head = (
        f"**{sc['name']}** ({sc['records']:,} records, C={sc['concurrency']}, "
        f"server latency {sc['latency_s'] * 1000:g} ms)"
    )
    latency = sc["kind"] == "latency"
    rows = [
        "| client | req/s | vs raw | "
        + ("vs C/L | " if latency else "")
        + "CPU/req | CPU/req incl. start-up | req/s incl. start-up | peak RSS |",
        "| --- | ---: | ---: | " + ("---: | " if latency else "") + "---: | ---: | ---: | ---: |",
    ]
    raw = s["clients"].get("raw-aiohttp", {}).get("req_s")
    for client, c in s["clients"].items():
        vs = f"{c['req_s'] / raw:.2f}x" if raw else ""
        if client == "llmrun" and "llmrun_vs_raw" in s:
            vs = f"{s['llmrun_vs_raw']:.2f}x"
        note = ""
        if client in SLOW and c["requests"] < sc["records"]:
            note = f" ({c['requests']:,.0f} req in {sc['slow_time_limit_s']:g} s)"
        ideal = f" {c['req_s'] * sc['latency_s'] / sc['concurrency']:.3f} |" if latency else ""
        rows.append(
            f"| {client}{note} | {c['req_s']:,.0f} | {vs} |{ideal} {c['cpu_us_per_req']:,.0f} µs "
            f"| {c['cpu_us_per_req_whole']:,.0f} µs | {c['req_s_process']:,.0f} "
            f"| {c['maxrss_mb']:.0f} MB |"
        )
    target = ""
    if "target" in s:
        got = (
            f"{s['llmrun_vs_raw']:.2f}x raw"
            if sc["kind"] == "throughput"
            else f"{s['clients']['llmrun']['req_s']:,.0f} req/s = {s['llmrun_vs_ideal']:.3f} x C/L"
        )
        target = f"; target {s['target']}: {got}, **{verdict(s['pass'])}**"
    return head + target + "\n\n" + "\n".join(rows)


# ------------------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller runs, 1 round (a smoke test)")
    p.add_argument(
        "--only",
        action="append",
        choices=["throughput", "realistic", "realistic-tls", "latency", "memory"],
        help="run only this scenario (repeatable)",
    )
    p.add_argument("--rounds", type=int, help="rounds of the HTTP scenarios (default 3)")
    p.add_argument(
        "--clients",
        help=f"comma-separated subset of {','.join(CLIENTS)} (llmrun and raw-aiohttp are the "
        "ones the targets compare)",
    )
    p.add_argument("--memory-records", type=int, help="the large memory run (default 1,000,000)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = p.parse_args()

    if sys.platform != "linux" or (os.cpu_count() or 1) < 2:
        sys.exit("the benchmark needs Linux and 2 cores (server on core 0, client on core 1)")
    only = set(args.only or ("throughput", "realistic", "realistic-tls", "latency", "memory"))
    rounds = args.rounds or (1 if args.quick else 3)
    clients = tuple(args.clients.split(",")) if args.clients else CLIENTS
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        p.error(f"unknown client(s): {', '.join(sorted(unknown))}")
    scale = 4 if args.quick else 1
    # Latency-bound runs last 100 round trips: what is measured is the steady state, not the
    # start (opening C connections; llmrun's first call per key waits for its answer).
    waves = 10 if args.quick else 100
    scenarios: list[Scenario] = []
    if "throughput" in only:
        scenarios.append(Scenario("throughput", "throughput", 20_000 // scale, 64, 0.0, clients))
    for name, tls in (("realistic", False), ("realistic-tls", True)):
        if name in only:
            scenarios.append(
                Scenario(
                    name, "throughput", 20_000 // scale, 64, 0.0, clients, realistic=True, tls=tls
                )
            )
    if "latency" in only:
        for c in (256, 512):
            scenarios.append(Scenario(f"latency-C{c}", "latency", waves * c, c, 0.2, clients))
    for sc in scenarios:
        sc.slow_time_limit_s = 5.0 if args.quick else 10.0

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    log(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}")
    results: list[dict[str, Any]] = []
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="llmrun-bench-") as tmp:
        ws = Workspace(Path(tmp))
        for sc in scenarios:
            results.append(run_http_scenario(ws, sc, rounds, log))
        if "memory" in only:
            large = args.memory_records or (200_000 if args.quick else 1_000_000)
            results.append(run_memory_scenario(ws, 10_000, large, 64, log))

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stamp}{'-quick' if args.quick else ''}.json"
    payload = {
        "started_at": started.isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "rounds": rounds,
        "machine": info,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print()
    for result in results:
        print(table(result))
        print()
    print(f"results: {path}")
    failed = [r for r in results if r["summary"].get("pass") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
