"""What every benchmark client shares: its command line, the records and the request body.

Every client sends the same requests llmrun sends for the benchmark recipe written by run.py:
one chat completion per record, ``system`` + ``user`` message, ``temperature: 0``,
``max_tokens: 16``, a bearer key, and reads each reply as JSON. Each prints one JSON line on
stdout: ``{"client", "ok", "errors", "elapsed_s"}`` where ``elapsed_s`` runs from the first
request to the last reply (start-up excluded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

SYSTEM = "You are terse."
MODEL = "fake-model"
API_KEY = "sk-bench-0123456789"
GENERATION = {"temperature": 0, "max_tokens": 16}


def record(i: int, realistic: bool = False) -> dict[str, Any]:
    """Record ``i`` of the generated data file (run.py writes the same)."""
    if realistic:
        return realistic_record(i)
    return {"id": f"r{i:08d}", "text": f"record number {i} says hello"}


# The realistic-row scenario: a product review of 200-1,200 characters with a few fields, turned
# into the prompt by a template (llmrun: Jinja, the hand-written loop: an f-string), and the
# whole record echoed into llmrun's row.
TEMPLATE = (
    "Review {{ id }} of {{ product }} ({{ stars }} stars, {{ lang }}):\n{{ text }}\n\n"
    "Label the sentiment: positive, negative or neutral."
)
_REVIEW = (
    "the battery lasted longer than I expected but the charger broke after a week and support "
    "never answered my emails so I bought another one from a local shop which works fine now "
    "screen colours are bright sound is clear shipping was slow price was fair would maybe buy "
    "again if they fix the hinge that squeaks every time I open the lid in the morning"
)
_WORDS = _REVIEW.split()


def realistic_record(i: int) -> dict[str, Any]:
    import random

    rng = random.Random(i)
    size = rng.randint(200, 1200)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return {
        "id": f"r{i:08d}",
        "product": f"product-{rng.randint(1, 5000)}",
        "stars": rng.randint(1, 5),
        "lang": rng.choice(("en", "en", "en", "de", "fr")),
        "text": " ".join(words)[:size],
    }


def user_prompt(rec: dict[str, Any]) -> str:
    if "product" not in rec:
        return str(rec["text"])
    return (
        f"Review {rec['id']} of {rec['product']} ({rec['stars']} stars, {rec['lang']}):\n"
        f"{rec['text']}\n\nLabel the sentiment: positive, negative or neutral."
    )


def records(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The records to send: read line by line from ``--data`` (as llmrun reads its input, so
    neither side pays for generating them), else generated."""
    if args.data:
        with open(args.data, encoding="utf-8") as fh:
            for line in itertools.islice(fh, args.records):
                yield json.loads(line)
        return
    for i in range(args.records):
        yield record(i, args.realistic)


def messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_prompt(rec)}]


def body(rec: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages(rec), **GENERATION}


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(p)
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:PORT/v1")
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--realistic", action="store_true", help="the realistic-row records")
    p.add_argument(
        "--data", help="read the records from this JSONL file (run.py's, as llmrun reads it)"
    )
    p.add_argument("--cafile", help="HTTPS: trust this CA (the benchmark's self-signed one)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop starting requests after this many seconds (0: none); for slow clients",
    )
    args = p.parse_args()
    if not args.url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
        p.error("benchmarks talk to 127.0.0.1 only")
    return args


def report(client: str, ok: int, errors: int, elapsed_s: float, **extra: Any) -> None:
    out = {"client": client, "ok": ok, "errors": errors, "elapsed_s": round(elapsed_s, 4)}
    out.update(extra)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
