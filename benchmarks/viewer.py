"""How long `llmrun view` takes to show the first page of a 10^6-row output, and `llmrun report`
to read one.

A realistic output is generated once in a temporary folder: rows as the JSONL writer makes them,
each with a record of a few hundred characters (a product review from templates), a reply of a
few sentences, usage, cost, times; 3% are error rows of a few types. Then, each in a fresh
process:

- cold: `llmrun view OUTPUT --port 0` with no index yet, from launch to the first page's HTTP
  answer (read straight from the file while the index is built in the background), then
  `?status=error`, which waits for the index to be built and saved in the state folder;
- warm: the same with the index there (what every later open costs), then the first page of
  `?status=error` and of a full-text search;
- `llmrun report OUTPUT` over the whole file.

    python benchmarks/viewer.py [--rows 1000000]

Prints the figures; nothing is asserted (a measurement, not a test). The target: the first page
in under 2 s.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from llmrun.jsonio import row_line

TARGET_S = 2.0
REVIEW = (
    "the strap broke after a week but support sent a new one quickly and it has held up fine "
    "since then although the zipper still sticks when the bag is full which is annoying on "
    "trips the color is nicer than in the photos and the price was fair for what you get"
)
WORDS = REVIEW.split(" ")
PRODUCTS = ["backpack", "kettle", "headphones", "desk lamp", "running shoes", "blender"]
ERRORS = ["rate_limit", "timeout", "invalid_request", "postprocess"]


def generate(path: Path, rows: int) -> None:
    rng = random.Random(1)
    start = time.time() - rows / 500
    with open(path, "wb") as fh:
        for i in range(rows):
            text = " ".join(rng.choices(WORDS, k=rng.randint(40, 70)))
            record = {"review_id": f"r{i:07d}", "product": rng.choice(PRODUCTS), "text": text}
            t0 = start + i / 500
            latency = rng.lognormvariate(-0.7, 0.4)
            failed = rng.random() < 0.03
            reply = " ".join(rng.choices(WORDS, k=rng.randint(15, 40)))
            usage = {"input_tokens": 90 + len(text) // 4, "output_tokens": 8 + len(reply) // 5}
            row = {
                "id": record["review_id"],
                "status": "error" if failed else "ok",
                "text": None if failed else reply,
                "fields": {} if failed else {"label": rng.choice(["positive", "negative"])},
                "error": {
                    "type": rng.choice(ERRORS),
                    "message": "the provider said no",
                    "retryable": True,
                }
                if failed
                else None,
                "response": None
                if failed
                else {
                    "text": reply,
                    "finish_reason": "stop",
                    "usage": usage,
                    "model": "gpt-4o-mini",
                },
                "record": record,
                "attempts": rng.choice([1, 1, 1, 2]),
                "latency_s": None if failed else round(latency, 4),
                "cost_usd": None if failed else round(usage["input_tokens"] * 1.5e-7, 8),
                "started_at": _iso(t0),
                "finished_at": _iso(t0 + latency),
                "recipe_hash": "78d121bc726c9b14",
            }
            fh.write(row_line(row))  # exactly as the JSONL writer writes a row


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def first_page(output: Path, *queries: str) -> list[float]:
    """Seconds from launching `llmrun view` to the answer of each query (the first timed from
    launch, the others one after the other)."""
    launched = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrun", "view", str(output), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        url = ""
        for line in proc.stderr:
            found = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if found:
                url = found.group(0)
                break
        times = []
        for query in queries:
            began = time.perf_counter() if times else launched
            with urllib.request.urlopen(url + query, timeout=60) as answer:
                assert answer.status == 200 and b'id="rows"' in answer.read()
            times.append(time.perf_counter() - began)
        return times
    finally:
        proc.terminate()
        proc.wait()
        proc.stderr.close()


def _target(seconds: float) -> str:
    return f"{'meets' if seconds < TARGET_S else 'misses'} the {TARGET_S:g}s target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--folder",
        type=Path,
        help="keep the generated output here and reuse it (default: a temporary folder)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / f"out-{args.rows}.jsonl"
        if not output.exists():
            began = time.perf_counter()
            generate(output, args.rows)
            print(f"generated the output in {time.perf_counter() - began:.1f}s")
        print(f"{args.rows:,} rows, {output.stat().st_size / 1e6:,.0f} MB")
        shutil.rmtree(output.with_name(output.name + ".llmrun"), ignore_errors=True)
        cold, built = first_page(output, "", "?status=error")
        warm, errors, search = first_page(output, "", "?status=error", "?q=zipper+still")
        print(f"no index yet: first page                {cold:6.2f}s  ({_target(cold)})")
        print(f"  then ?status=error (waits for the index) {built:6.2f}s")
        print(f"index cached: first page                {warm:6.2f}s  ({_target(warm)})")
        print(f"  then ?status=error                    {errors:6.2f}s")
        print(f"  then a full-text search               {search:6.2f}s")
        index = output.with_name(output.name + ".llmrun") / "view-index.bin"
        print(f"index: {index.stat().st_size / 1e6:.1f} MB")
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "llmrun", "report", str(output)], check=True, capture_output=True
        )
        print(f"llmrun report                           {time.perf_counter() - began:6.2f}s")


if __name__ == "__main__":
    main()
