"""`llmrun serve` under load: 200 concurrent clients posting single records to a served mock
recipe, against calling the same recipe's mock directly (in-process, the same render -> call ->
post-process path, without HTTP), and against the floor of the HTTP stack itself (Starlette on
uvicorn answering a fixed row).

    pip install -e '.[serve,bench]' && python benchmarks/serve.py [--requests 4000]
        [--clients 200] [--latency 0,0.05]

The server is the real `llmrun serve` in its own process (pinned to core 0 with taskset when
there is one); the clients are one aiohttp process (core 1), each of the N clients posting one
record at a time and waiting for its row. Prompts are rendered from templates of several hundred
characters, as a real labelling recipe's are. Prints a table; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SYSTEM = (
    "You label the sentiment of product reviews for a retail analytics team. Read the review "
    "carefully, weigh praise against complaints, ignore shipping remarks unless they are the "
    "main point, and answer with exactly one word: positive, negative or neutral. Do not "
    "explain your answer and do not add punctuation."
)
USER = (
    "Product: {{ product }}\nCategory: {{ category }}\nReview title: {{ title }}\n"
    "Review: {{ text }}\nIs this review positive, negative or neutral?"
)


def record(i: int) -> dict[str, Any]:
    return {
        "id": f"r{i:07d}",
        "product": f"Stainless steel kettle model {i % 97}",
        "category": "kitchen appliances",
        "title": f"My experience after {i % 30 + 1} weeks",
        "text": (
            f"I bought this kettle (order {i}) to replace an old one. It boils a full litre in "
            "under three minutes, the handle stays cool and the lid opens with one hand. The "
            "cord is a little short and the blue light is brighter than it needs to be, but "
            "overall it does what it promises and looks good on the counter."
        ),
    }


def write_recipe(folder: Path, latency: float, concurrency: int) -> Path:
    (folder / "data.jsonl").write_text(json.dumps(record(0)) + "\n", encoding="utf-8")
    recipe = {
        "name": "serve-bench",
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": {"system": SYSTEM, "user": USER},
        "provider": {
            "name": "mock",
            "latency_s": latency,
            "replies": ["positive", "negative", "neutral"],
        },
        "generation": {"temperature": 0, "max_tokens": 4},
        "run": {"concurrency": concurrency},
        "postprocess": ["strip"],
        "output": {"path": "out.jsonl"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def summarize(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
    }


# -- the clients (run in their own process: `serve.py client ...`) ------------------------------


async def http_clients(url: str, clients: int, requests: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            for i in counter:
                body = json.dumps({"records": [record(i)]})
                started = time.perf_counter()
                async with session.post(
                    url + "/v1/records", data=body, headers={"content-type": "application/json"}
                ) as answer:
                    data = await answer.read()
                if answer.status == 200 and json.loads(data)["rows"][0]["status"] == "ok":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors)


async def direct_clients(recipe_path: Path, clients: int, requests: int) -> dict[str, Any]:
    from llmrun.api import open_recipe
    from llmrun.serve.service import Service

    recipe, registry = open_recipe(recipe_path)
    service = Service(recipe, registry, queue=clients)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    async with service.opened():

        async def client() -> None:
            nonlocal errors
            for i in counter:
                rec = record(i)
                started = time.perf_counter()
                prompt = service.render(rec["id"], rec)
                row = await service.record_row(rec["id"], rec, prompt)
                json.dumps(row)  # the answer a client would get is serialized too
                if row["status"] == "ok":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors)


def floor_server() -> None:
    """The framework's floor: Starlette on uvicorn answering a fixed row, no llmrun at all."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def records(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse({"rows": [{"status": "ok"}]})

    app = Starlette(routes=[Route("/v1/records", records, methods=["POST"])])
    # IPPROTO_TCP named, as llmrun serve's own socket is: asyncio sets TCP_NODELAY on the
    # connections it accepts only then (else each answer's body waits for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"floor on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["http", "direct"])
    p.add_argument("target")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--requests", type=int, required=True)
    args = p.parse_args(argv)
    if args.kind == "http":
        if not args.target.startswith("http://127.0.0.1:"):
            p.error("benchmarks talk to 127.0.0.1 only")
        result = asyncio.run(http_clients(args.target, args.clients, args.requests))
    else:
        result = asyncio.run(direct_clients(Path(args.target), args.clients, args.requests))
    print(json.dumps(result))


# -- the driver ------------------------------------------------------------------------------


def run_client(kind: str, target: str, clients: int, requests: int, core: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "client", kind, target]
    argv += ["--clients", str(clients), "--requests", str(requests)]
    out = subprocess.run(pinned(core, argv), capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def served(recipe: Path, clients: int, requests: int, floor: bool = False) -> dict[str, Any]:
    script = Path(sys.executable).parent / "llmrun"
    log = recipe.parent / "serve.log"
    argv = [str(script), "serve", str(recipe), "--port", "0"]
    if floor:
        argv = [sys.executable, __file__, "floor-server"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            pinned(0, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            text = log.read_text(encoding="utf-8", errors="replace")
            if " on http://" in text:
                url = text.split(" on ", 1)[1].split()[0]
            time.sleep(0.1)
        time.sleep(1.0)  # the lifespan start-up
        run_client("http", url, clients, min(500, requests), 1)  # warm-up
        return run_client("http", url, clients, requests, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "floor-server":
        floor_server()
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--latency", default="0,0.05", help="mock latencies (s), comma-separated")
    p.add_argument("--concurrency", type=int, default=200, help="the recipe's run.concurrency")
    args = p.parse_args()
    rows: list[tuple[float | None, str, dict[str, Any]]] = []
    for latency in (float(x) for x in args.latency.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            recipe = write_recipe(Path(tmp), latency, args.concurrency)
            direct = run_client("direct", str(recipe), args.clients, args.requests, 1)
            http = served(recipe, args.clients, args.requests)
        for name, result in (("direct (in-process)", direct), ("llmrun serve (HTTP)", http)):
            rows.append((latency, name, result))
    with tempfile.TemporaryDirectory() as tmp:
        recipe = write_recipe(Path(tmp), 0.0, args.concurrency)
        floor = served(recipe, args.clients, args.requests, floor=True)
    rows.append((None, "Starlette + uvicorn, a fixed answer (the floor)", floor))
    print(f"{args.clients} clients, {args.requests} requests, run.concurrency {args.concurrency}")
    print("| mock latency | path | req/s | p50 | p99 | errors |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for latency, name, r in rows:
        at = "-" if latency is None else f"{latency * 1000:.0f} ms"
        print(
            f"| {at} | {name} | {r['req_s']:,.0f} | {r['p50_ms']:.1f} ms "
            f"| {r['p99_ms']:.1f} ms | {r['errors']} |"
        )
    print(f"cores: {os.cpu_count()}; server pinned to core 0, clients to core 1")


if __name__ == "__main__":
    main()
