"""What the call cache costs on the hot path: ``python benchmarks/cache.py`` (benchmarks/README.md).

The real CLI against the fake server (each pinned to its own core, as in run.py), on realistic
prompts: a 370-character system prompt and a user message rendered from a template over records
with a 500-character review (about 1.2 kB of request body; the fake server echoes the user
message, so each stored reply is about 1.6 kB with its raw body). Three configurations, each
run from an empty output (``--fresh`` semantics: a new output path every run):

- ``no cache``: the recipe without ``cache:``;
- ``cache, all miss``: with an empty cache file (every call looked up, sent, stored);
- ``cache, all hit``: again on the file the previous run filled (nothing sent).

Scenarios: ``throughput`` (no server latency, C=64: the client's CPU is the limit) and
``latency`` (200 ms, C=256: the round trip is the limit). Per run: req/s from the summary's
``elapsed_s``, CPU per request (user+sys less the same configuration's CPU on 1 record) and
requests the server saw. Then, in this process, the per-call work the cache adds, timed alone:
the key (the request built with the stand-in key, canonical JSON, SHA-256) and the reply's JSON
both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import fake_server, run_client  # noqa: E402

SYSTEM = (
    "You label customer reviews for an online shop. Read the review, decide whether its "
    "sentiment is positive, negative or neutral, and name the single aspect of the product it "
    "talks about most (quality, price, delivery, size, service, other). Answer with one JSON "
    'object: {"sentiment": ..., "aspect": ...}, nothing else. When a review mixes praise and '
    "complaints, weigh what the customer says they will do next."
)
USER = (
    "Product: {{ product }}\nReview {{ id }} ({{ stars }} stars):\n{{ text }}\n\nLabel this review."
)
WORDS = [
    "the",
    "strap",
    "broke",
    "after",
    "two",
    "weeks",
    "but",
    "the",
    "seller",
    "replaced",
    "it",
    "quickly",
    "and",
    "the",
    "new",
    "one",
    "feels",
    "sturdier",
    "than",
    "before",
    "although",
    "the",
    "colour",
    "is",
    "slightly",
    "off",
    "compared",
    "with",
    "the",
    "photos",
    "and",
    "the",
    "zip",
    "sticks",
    "when",
    "the",
    "bag",
    "is",
    "full",
    "which",
    "is",
    "annoying",
    "on",
    "a",
    "daily",
    "commute",
    "delivery",
    "was",
    "fast",
    "packaging",
    "fine",
    "price",
    "fair",
    "for",
    "what",
    "you",
    "get",
    "would",
    "probably",
    "buy",
    "again",
    "if",
    "it",
    "went",
    "on",
    "sale",
]
PRODUCTS = ("backpack", "kettle", "running shoes", "desk lamp", "headphones", "rain jacket")


def records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(95))[:500]
        out.append(
            {
                "id": f"r{i:07d}",
                "product": rng.choice(PRODUCTS),
                "stars": rng.randint(1, 5),
                "text": text,
            }
        )
    return out


def recipe(root: Path, name: str, url: str, concurrency: int, cache: str | None) -> Path:
    data: dict[str, Any] = {
        "name": name,
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": {"system": SYSTEM, "user": USER},
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
    if cache is not None:
        data["cache"] = cache
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    return path


class Runner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0

    def llmrun(self, recipe: Path, limit: int | None = None) -> dict[str, Any]:
        self.runs += 1
        argv = [sys.executable, "-m", "llmrun", "run", str(recipe), "--quiet", "--json"]
        argv += ["--set", f"output.path=out/run-{self.runs}.jsonl"]
        if limit is not None:
            argv += ["--limit", str(limit)]
        env = dict(os.environ, LLMRUN_PLUGINS="", PYTHONUNBUFFERED="1")
        try:
            report, measured = run_client(argv, self.root, env)
        finally:
            shutil.rmtree(self.root / "out", ignore_errors=True)  # every run from scratch
        if report.get("status") != "completed" or report.get("error"):
            raise RuntimeError(f"llmrun did not complete: {report}")
        return {**report, **measured}


def scenario(
    root: Path, label: str, n: int, concurrency: int, latency_s: float, rounds: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with fake_server(latency_s, root) as server:
        url = server["url"]
        plain = recipe(root, f"{label}-plain", url, concurrency, None)
        cached = recipe(root, f"{label}-cached", url, concurrency, f"{label}-cache.db")
        runner = Runner(root)
        # Start-up CPU of each configuration (1 record): subtracted from the CPU per request.
        startup: dict[str, float] = {}
        for config, path in (("no cache", plain), ("cache", cached)):
            cpus = []
            for _ in range(3):
                (root / f"{label}-cache.db").unlink(missing_ok=True)
                cpus.append(runner.llmrun(path, limit=1)["cpu_s"])
            startup[config] = statistics.median(cpus)
        for rnd in range(rounds):
            for p in root.glob(f"{label}-cache.db*"):
                p.unlink()
            order = [("no cache", plain), ("cache, all miss", cached), ("cache, all hit", cached)]
            for config, path in order:
                got = runner.llmrun(path, limit=n)
                base = startup["no cache" if config == "no cache" else "cache"]
                results.append(
                    {
                        "scenario": label,
                        "config": config,
                        "round": rnd,
                        "records": n,
                        "cached": got["cached"],
                        "req_s": n / got["elapsed_s"],
                        "cpu_us_per_req": (got["cpu_s"] - base) / n * 1e6,
                        "maxrss_mb": got["maxrss_mb"],
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr)
    return results


def micro(n: int = 5000) -> dict[str, float]:
    """Microseconds per call of the cache's own work on the loop, timed alone."""
    from llmrun.builtins.openai import OpenAIChat
    from llmrun.recipe.model import freeze
    from llmrun.run.cache import STAND_IN_KEY, RequestKeys, dump_reply, load_reply
    from llmrun.values import ComponentContext, Prompt, Reply, Usage

    provider = OpenAIChat({"model": "fake-model"}, ComponentContext(HERE, "bench"))
    generation = freeze({"temperature": 0, "max_tokens": 64})
    prompts = [
        Prompt(
            r["id"],
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Product: {r['product']}\n{r['text']}"},
            ],
            generation,
        )
        for r in records(n)
    ]

    def per_call(fn: Any) -> float:
        started = time.perf_counter()
        for p in prompts:
            fn(p)
        return (time.perf_counter() - started) / n * 1e6

    build = min(per_call(lambda p: provider.build_request(p, "sk-real")) for _ in range(3))
    keys = RequestKeys()
    keyed = min(per_call(lambda p: keys(provider.build_request(p, STAND_IN_KEY))) for _ in range(3))
    text = prompts[0].messages[1]["content"]
    raw = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: " + text}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 120, "total_tokens": 420},
    }
    reply = Reply("echo: " + text, "stop", Usage(300, 120), "fake-model", "chatcmpl-1", raw=raw)
    stored = dump_reply(reply)
    assert stored is not None
    dump = min(per_call(lambda p: dump_reply(reply)) for _ in range(3))
    load = min(per_call(lambda p: load_reply(stored)) for _ in range(3))
    return {
        "build_request_us": build,
        "key_us (a second build with the stand-in key + canonical JSON + SHA-256)": keyed,
        "dump_reply_us": dump,
        "load_reply_us": load,
        "stored_reply_bytes": len(stored),
        "request_body_bytes": len(provider.build_request(prompts[0], "k").content),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for label in dict.fromkeys(r["scenario"] for r in results):
        lines.append(f"\n{label}\n")
        lines.append("| configuration | req/s | CPU/req | cached rows | requests sent |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for config in ("no cache", "cache, all miss", "cache, all hit"):
            rows = [r for r in results if r["scenario"] == label and r["config"] == config]
            lines.append(
                f"| {config} | {statistics.median(r['req_s'] for r in rows):,.0f} "
                f"| {statistics.median(r['cpu_us_per_req'] for r in rows):,.0f} µs "
                f"| {rows[0]['cached']:,} | {rows[0]['records'] - rows[0]['cached']:,} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--records", type=int, default=20_000, help="throughput scenario")
    p.add_argument("--only", choices=["throughput", "latency", "micro"], action="append")
    args = p.parse_args()
    only = set(args.only or ["throughput", "latency", "micro"])
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llmrun-bench-cache-") as tmp:
        root = Path(tmp)
        (root / "data.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records(max(args.records, 256 * 20))),
            encoding="utf-8",
        )
        if "throughput" in only:
            results += scenario(root, "throughput", args.records, 64, 0.0, args.rounds)
        if "latency" in only:
            results += scenario(root, "latency", 256 * 20, 256, 0.2, args.rounds)
    if "micro" in only:
        out["micro"] = micro()
        for k, v in out["micro"].items():
            print(f"{k}: {v:,.1f}")
    out["runs"] = results
    if results:
        print(table(results))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"cache-{stamp}.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
