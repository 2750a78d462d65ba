"""What the template sandbox costs: prompts rendered per second by ``PromptTemplate`` in Jinja's
ImmutableSandboxedEnvironment (what recipes render in) against a plain ``jinja2.Environment``
with the same filters, loader and options (what they rendered in before).

The prompts are realistic: a system message and a user message of several hundred characters
from a template with attribute lookups, a filter chain, a loop over a list field, ``tojson`` and
``load()`` of few-shot examples, over records of a few fields. Both environments render the very
same records, in short alternating rounds timed in CPU time of this process (the machine is
shared: wall time swings by more than the difference measured), and the median and the best
round of each are reported.

    python benchmarks/sandbox.py [--records 3000] [--rounds 21]

Prints renders per CPU second of each and the sandbox's cost in percent (the target: under 5%).
Nothing is asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jinja2

from llmrun.recipe import templates
from llmrun.recipe.templates import PromptTemplate

SYSTEM = (
    "You are a careful annotator for {{ load('guide.json').project }}. Label each product "
    "review with its sentiment and the aspects it mentions. Answer in JSON with the keys "
    "sentiment (positive, negative, neutral) and aspects (a list of short strings)."
)
USER = """\
Product: {{ record.product.name }} ({{ record.product.category | lower }})
Rating: {{ rating }}/5 from {{ author | default('anonymous') | title }}
{% for shot in load('guide.json').shots %}Example: {{ shot.review }} -> {{ shot.label }}
{% endfor %}Tags: {{ tags | join(', ') }}
Metadata: {{ record.meta | tojson }}
Review:
{{ text | trim | truncate(600) }}
"""
WORDS = [
    *("the", "battery", "lasts", "long", "but", "the", "screen", "scratches", "easily"),
    *("and", "support", "never", "answered"),
]


def records(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(45 + i % 30)]
        out.append(
            {
                "id": f"r{i}",
                "text": " ".join(words).capitalize() + ".",
                "rating": 1 + i % 5,
                "author": None if i % 4 == 0 else f"user number {i}",
                "tags": ["verified", "mobile", "2024"][: 1 + i % 3],
                "product": {"name": f"Phone X{i % 50}", "category": "ELECTRONICS"},
                "meta": {"source": "shop", "lang": "en", "helpful": i % 11},
            }
        )
    return out


def build(folder: Path) -> PromptTemplate:
    return PromptTemplate([("system", SYSTEM), ("user", USER)], {"max_tokens": 64}, folder)


def round_rate(template: PromptTemplate, data: list[dict[str, Any]]) -> tuple[float, int]:
    start = time.process_time()
    for rec in data:
        template.render(rec["id"], rec)
    rate = len(data) / (time.process_time() - start)
    chars = sum(len(m["content"]) for m in template.render("x", data[0]).messages)
    return rate, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    data = records(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        guide = {
            "project": "the review study",
            "shots": [
                {"review": "Great value, fast delivery.", "label": "positive"},
                {"review": "Broke after a week.", "label": "negative"},
            ],
        }
        (folder / "guide.json").write_text(json.dumps(guide), encoding="utf-8")
        sandboxed = build(folder)
        sandbox_class = templates.SandboxEnvironment
        templates.SandboxEnvironment = jinja2.Environment  # type: ignore[misc,assignment]
        try:
            plain = build(folder)
        finally:
            templates.SandboxEnvironment = sandbox_class  # type: ignore[misc]
        assert isinstance(sandboxed.env, jinja2.sandbox.SandboxedEnvironment)
        assert not isinstance(plain.env, jinja2.sandbox.SandboxedEnvironment)
        first = sandboxed.render("x", data[0]).messages
        assert first == plain.render("x", data[0]).messages  # the same prompts
        rates: dict[str, list[float]] = {"plain": [], "sandbox": []}
        size = 0
        for i in range(args.rounds):
            order = [("plain", plain), ("sandbox", sandboxed)]
            for name, template in order if i % 2 == 0 else order[::-1]:
                rate, size = round_rate(template, data)
                rates[name].append(rate)
    print(f"prompts of ~{size} characters, {args.records:,} records, {args.rounds} rounds each")
    costs = {}
    for label, pick in (("median", statistics.median), ("best", max)):
        plain_rate, sandbox_rate = pick(rates["plain"]), pick(rates["sandbox"])
        costs[label] = (plain_rate - sandbox_rate) / plain_rate * 100
        print(
            f"{label:>6} round: plain jinja2.Environment {plain_rate:>9,.0f} renders/CPU s, "
            f"ImmutableSandboxedEnvironment {sandbox_rate:>9,.0f}"
        )
    print(
        f"sandbox cost: {costs['median']:+.1f}% (median rounds), {costs['best']:+.1f}% "
        "(best rounds); target: under 5%"
    )


if __name__ == "__main__":
    main()
