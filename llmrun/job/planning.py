"""``llmrun plan``: what a run would do and cost, worked out without calling anything.

One streamed pass over the records (a 10M-record input is never held in memory): each record is
counted, its id checked against the rows already in the output, and its prompt variables
checked; the first ``sample`` records still to send are rendered and their tokens counted, and
the totals are extrapolated from them.

The output is read the way resume reads it, but read-only: no run lock is taken and a torn last
line is skipped rather than repaired, so ``plan`` is safe beside a running job. Only outputs of
the ``jsonl`` writer can be read this way; for another writer "already done" is unknown.

Estimates, each documented in docs/sharing.md:

- tokens: ``llmrun.recipe.tokens`` (tiktoken when installed, else 4 characters a token).
- cost: low = input + a typical output, high = input + the output ceiling, from the price
  table (the recipe's ``prices:`` first), with the batch discount when ``run.mode`` is batch.
  The typical output is the mean reported by rows already done, else a quarter of the ceiling.
- duration: the slowest of three bounds: calls in flight (``run.concurrency`` with an assumed
  latency), ``run.requests_per_minute`` and ``run.tokens_per_minute``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import Problem, RecipeError, RecordError
from ..plugins import Registry, build_component
from ..recipe import tokens
from ..recipe.envvars import read_dotenv
from ..recipe.model import Recipe
from ..recipe.pricing import PriceTable
from ..recipe.templates import PromptTemplate
from ..redaction import Redactor
from ..values import ComponentContext, Usage
from .ids import record_id
from .output import read_rows
from .records import selected
from .store import IdSet

SHOWN_PROMPTS = 3
DEFAULT_SAMPLE = 1000
# A call's latency when nothing better is known: a fixed part plus the output generated at a
# typical decoding speed. Only the concurrency bound uses it.
BASE_LATENCY_S = 0.5
DECODE_TOKENS_PER_S = 50.0
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


@dataclass
class Plan:
    """What ``llmrun plan`` reports (``--json`` prints it as is)."""

    recipe: str
    model: str | None
    mode: str
    records: int = 0  # records the run would take (data.limit applied)
    unreadable: int = 0
    done: int | None = 0  # of those, already in the output (None: the writer cannot be read)
    to_send: int = 0
    sampled: int = 0
    prompts: list[list[dict[str, Any]]] = field(default_factory=list)
    token_method: str = ""
    input_tokens: int = 0  # estimated, for the records to send
    output_tokens_typical: int = 0
    output_tokens_max: int = 0
    cost_usd_low: float | None = None
    cost_usd_high: float | None = None
    duration_s: float | None = None
    duration_bound: str = ""  # which limit sets the pace
    call_latency_s: float | None = None  # a call's seconds, when the provider knows them
    warnings: list[str] = field(default_factory=list)
    # What the recipe reaches beyond itself (docs/sharing.md): where each key goes, the
    # environment variables it declared for use outside the provider, the code it names.
    endpoints: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    # A steps: recipe: each step's estimate (name, model, tokens, cost); the totals above
    # add them up, as if every step ran for every record.
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def missing_env(
    recipe_path: Path, environ: Mapping[str, str], overrides: Sequence[str] = ()
) -> list[str]:
    """Variables the recipe (or a ``--set``) reads with ``${VAR}`` and no default that are not
    set anywhere."""
    try:
        text = recipe_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # loading the recipe reports it
    dotenv = read_dotenv(recipe_path.parent / ".env")
    # Whole-line comments (like the quickstart's example provider) are not read.
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    used = "\n".join([*lines, *overrides])
    names = {m.group(1) for m in _ENV_REF.finditer(used) if m.group(1) and not m.group(2)}
    return sorted(n for n in names if n not in environ and n not in dotenv)


def make_plan(
    recipe: Recipe, registry: Registry, *, sample: int = DEFAULT_SAMPLE, limit: int | None = None
) -> Plan:
    """Work out the plan in one streamed pass over the records (``limit`` as ``run --limit``)."""
    limit = recipe.limit if limit is None else limit
    run = recipe.run
    mode = str(getattr(run, "mode", "direct") or "direct")
    context = ComponentContext(recipe.base_dir, recipe.name, access=recipe.access)
    model, latency = _provider_facts(recipe, registry, context)
    plan = Plan(str(recipe.path), model, mode)
    plan.call_latency_s = latency
    plan.endpoints = [str(route) for route in recipe.key_routes]
    plan.env = list(recipe.env_names)
    trust = recipe.access.trusted_by
    plan.code = [
        f"{what} ({'trusted: ' + trust if trust else 'not run: pass --trust to run it'})"
        for what in recipe.code
    ]
    plan.token_method = tokens.method()
    done_ids, typical_seen = _read_done(recipe, registry, plan)
    template = PromptTemplate.for_recipe(recipe)
    ceiling = tokens.output_ceiling(recipe.generation)
    # steps: each later step rendered for the sampled records too, the earlier answers stood
    # in for by text of a typical answer's length (their real answers are not known yet).
    later = [PromptTemplate.for_step(recipe, spec) for spec in recipe.steps[1:]]
    ceilings = [tokens.output_ceiling(spec.generation) for spec in recipe.steps]
    step_input = [0] * len(recipe.steps)
    step_sampled = [0] * len(recipe.steps)
    window = context_window(plan.model)
    lacking: dict[tuple[str, ...], _Places] = {}
    failing: dict[str, int] = {}
    over_window = 0
    sampled_input = 0
    # Counts and the first few places only: a 10M-record input may lack a field everywhere.
    no_id = _Places()
    cannot = _Places()  # a filter that fails on the record
    loader = build_component(registry, "loader", recipe.data, context)
    # The records a run would take: the very stream every mode reads (selection applied).
    works = selected(recipe, loader, limit=limit)
    try:
        for work in works:
            plan.records += 1
            if work.data is None:
                plan.unreadable += 1
                continue
            rid = work.id
            if work.error is not None:  # the run writes an error row for it without calling
                if record_id(work.data, recipe.id_field) is None:
                    no_id.add(work.where)
                else:
                    cannot.add(work.where)
                continue
            if rid in done_ids:
                assert plan.done is not None
                plan.done += 1
                continue
            plan.to_send += 1
            missing = template.missing(work.data)
            if missing:
                lacking.setdefault(tuple(missing), _Places()).add(work.where)
            if plan.sampled >= sample:
                continue
            try:
                prompt = template.render(rid, work.data)
            except RecordError as exc:  # a template or an image (ImageError) the run would fail
                if not missing:
                    failing[str(exc)] = failing.get(str(exc), 0) + 1
                continue
            plan.sampled += 1
            used = tokens.input_tokens(prompt.messages)
            sampled_input += used
            if later:
                step_input[0] += used
                step_sampled[0] += 1
                _sample_steps(recipe, later, ceilings, work.id, work.data, step_input, step_sampled)
            if window is not None and used + ceiling > window:
                over_window += 1
            if len(plan.prompts) < SHOWN_PROMPTS:
                plan.prompts.append(list(prompt.messages))
    except OSError as exc:
        raise RecipeError(
            [Problem(f"cannot read the data: {exc}", "data", str(recipe.path))]
        ) from None
    except RecipeError:
        raise
    except Exception as exc:  # a plugin's loader that breaks is its fault, told as such
        info = registry.get("loader", recipe.data.name)
        raise RecipeError(
            [
                Problem(
                    f"loader {info.name!r} ({info.package} {info.version}) failed after "
                    f"{plan.records} record(s): {type(exc).__name__}: {exc}",
                    "data",
                    str(recipe.path),
                )
            ]
        ) from None
    finally:
        works.close()
    mean_input = sampled_input / plan.sampled if plan.sampled else 0.0
    plan.input_tokens = round(mean_input * plan.to_send)
    typical = typical_seen if typical_seen is not None else max(1, ceiling // 4)
    plan.output_tokens_typical = round(min(typical, ceiling) * plan.to_send)
    plan.output_tokens_max = ceiling * plan.to_send
    _cost(plan, recipe)
    if recipe.steps:
        _steps_estimate(plan, recipe, ceilings, step_input, step_sampled, mean_input)
    _duration(plan, recipe, ceiling)
    _warnings(plan, recipe, lacking, failing, over_window, window)
    if no_id.count:
        plan.warnings.append(
            f"{no_id.count} record(s) have no {recipe.id_field!r} field (data.id) ({no_id}): "
            "they will be error rows"
        )
    if cannot.count:
        plan.warnings.append(
            f"{cannot.count} record(s) fail data.filter ({cannot}): they will be error rows"
        )
    redact = Redactor({*recipe.secrets, *recipe.api_keys})
    plan.prompts = [
        [
            {
                **m,
                "content": redact(m["content"]) if isinstance(m["content"], str) else m["content"],
            }
            for m in messages
        ]
        for messages in plan.prompts
    ]
    plan.warnings = [redact(w) for w in plan.warnings]
    return plan


class _Places:
    """How many records share a problem, and where the first three are."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(where)

    def __str__(self) -> str:
        return ", ".join(self.first) + (" ..." if self.count > len(self.first) else "")


@cache
def _windows() -> dict[str, int]:
    text = resources.files("llmrun").joinpath("data/context_windows.json").read_text("utf-8")
    return {str(k): int(v) for k, v in json.loads(text)["models"].items()}


def context_window(model: str | None) -> int | None:
    """The model's context window in tokens, from the table as data; None when unknown."""
    if not model:
        return None
    table = _windows()
    for name in (model, model.rsplit("/", 1)[-1]):
        if name in table:
            return table[name]
        best = max((k for k in table if name.startswith(k + "-")), key=len, default=None)
        if best is not None:
            return table[best]
    return None


def _provider_facts(
    recipe: Recipe, registry: Registry, context: ComponentContext
) -> tuple[str | None, float | None]:
    """The model the provider will ask for, and the seconds a call takes when the provider
    knows (``expected_latency_s``: the mock's is exact, it answers in-process)."""
    latency: Any = None
    try:
        provider = build_component(registry, "provider", recipe.provider, context)
        model = getattr(provider, "model", None)
        latency = getattr(provider, "expected_latency_s", None)
    except Exception:  # a plugin provider that wants more than its options: fall back
        model = recipe.provider.options.get("model")
    known = float(latency) if isinstance(latency, int | float) else None
    return None if model is None else str(model), known


def _read_done(recipe: Recipe, registry: Registry, plan: Plan) -> tuple[IdSet, float | None]:
    """The ids already in the output and the mean output tokens of its ok rows, read-only,
    through the writer plugin."""
    try:
        rows = read_rows(recipe, registry)
    except RecipeError as exc:
        plan.done = None
        plan.warnings.append(f"{exc}: records already done are counted as still to send")
        return IdSet(), None
    outputs = [0, 0]  # ok rows reporting output tokens, and their sum

    def ids() -> Iterator[str]:
        for row in rows:
            if row.get("status") == "ok":
                usage = (row.get("response") or {}).get("usage") or {}
                out = usage.get("output_tokens")
                if isinstance(out, int):
                    outputs[0] += 1
                    outputs[1] += out
            yield str(row["id"])

    done = IdSet(ids())
    return done, (outputs[1] / outputs[0] if outputs[0] else None)


def _sample_steps(
    recipe: Recipe,
    later: list[PromptTemplate],
    ceilings: list[int],
    rid: str,
    data: Mapping[str, Any],
    step_input: list[int],
    step_sampled: list[int],
) -> None:
    """Tokens of each later step's prompt for one record, the earlier steps' answers taken as
    a typical answer's length (a quarter of the output ceiling) of plain words."""
    seen: dict[str, Any] = {}
    for k, spec in enumerate(recipe.steps):
        if k:
            try:
                prompt = later[k - 1].render(rid, {**data, "steps": seen})
            except RecordError:
                pass  # it reads a field of an earlier answer: not known before the run
            else:
                step_input[k] += tokens.input_tokens(prompt.messages)
                step_sampled[k] += 1
        text = " ".join(["word"] * max(1, ceilings[k] // 4))
        seen[spec.name] = {"status": "ok", "text": text, "fields": {}}


def _steps_estimate(
    plan: Plan,
    recipe: Recipe,
    ceilings: list[int],
    step_input: list[int],
    step_sampled: list[int],
    mean_input: float,
) -> None:
    """Each step's estimate, and the plan's totals as their sums."""
    table = PriceTable(recipe.prices)
    batch = plan.mode == "batch"
    totals = {"input": 0, "typical": 0, "max": 0}
    low: float | None = 0.0
    high: float | None = 0.0
    for k, spec in enumerate(recipe.steps):
        n = plan.to_send
        mean = step_input[k] / step_sampled[k] if step_sampled[k] else mean_input
        model = str(spec.provider_options.get("model") or plan.model or "")
        entry: dict[str, Any] = {
            "name": spec.name,
            "model": model or None,
            "input_tokens": round(mean * n),
            "output_tokens_typical": max(1, ceilings[k] // 4) * n,
            "output_tokens_max": ceilings[k] * n,
            "sampled": step_sampled[k],
        }
        price = table.lookup(model or None)
        cost_low = cost_high = None
        if price is not None:
            cost_low = price.cost(
                Usage(entry["input_tokens"], entry["output_tokens_typical"]), batch=batch
            )
            cost_high = price.cost(
                Usage(entry["input_tokens"], entry["output_tokens_max"]), batch=batch
            )
        entry["cost_usd_low"] = None if cost_low is None else round(cost_low, 6)
        entry["cost_usd_high"] = None if cost_high is None else round(cost_high, 6)
        low = None if low is None or cost_low is None else low + cost_low
        high = None if high is None or cost_high is None else high + cost_high
        totals["input"] += entry["input_tokens"]
        totals["typical"] += entry["output_tokens_typical"]
        totals["max"] += entry["output_tokens_max"]
        plan.steps.append(entry)
    plan.input_tokens = totals["input"]
    plan.output_tokens_typical = totals["typical"]
    plan.output_tokens_max = totals["max"]
    plan.cost_usd_low = None if low is None else round(low, 6)
    plan.cost_usd_high = None if high is None else round(high, 6)
    plan.warnings.append(
        f"steps: the estimates add up all {len(recipe.steps)} steps as if each ran for every "
        "record (a `when:` may skip some), later prompts with earlier answers of a typical "
        "length"
    )


def _cost(plan: Plan, recipe: Recipe) -> None:
    price = PriceTable(recipe.prices).lookup(plan.model)
    if price is None:
        plan.warnings.append(
            f"no known price for model {plan.model!r}: cost unknown "
            "(add it under `prices:` in the recipe)"
        )
        return
    batch = plan.mode == "batch"
    low = price.cost(Usage(plan.input_tokens, plan.output_tokens_typical), batch=batch)
    high = price.cost(Usage(plan.input_tokens, plan.output_tokens_max), batch=batch)
    plan.cost_usd_low = None if low is None else round(low, 6)
    plan.cost_usd_high = None if high is None else round(high, 6)


def _duration(plan: Plan, recipe: Recipe, ceiling: int) -> None:
    n = plan.to_send
    if plan.mode == "batch":
        plan.duration_s = None
        plan.duration_bound = "batch: the provider finishes a batch within its window (24 h)"
        return
    run = recipe.run
    calls = n * max(1, len(recipe.steps))  # a steps: record makes a call per step
    per_call = n and plan.output_tokens_typical / calls
    n = calls
    latency = plan.call_latency_s
    if latency is None:
        latency = BASE_LATENCY_S + per_call / DECODE_TOKENS_PER_S
    waves = math.ceil(n / max(run.concurrency, 1))  # calls in flight finish together at best
    bounds: dict[str, float] = {
        f"concurrency {run.concurrency} at ~{float(latency):.2f} s a call": waves * float(latency)
    }
    rpm = getattr(run, "requests_per_minute", None)
    if rpm:
        bounds[f"requests_per_minute {rpm:g}"] = n / float(rpm) * 60
    tpm = getattr(run, "tokens_per_minute", None)
    if tpm:
        # Rate limiters reserve the output ceiling, so it counts here, not the typical output.
        bounds[f"tokens_per_minute {tpm:g}"] = (plan.input_tokens + ceiling * n) / float(tpm) * 60
    bound, seconds = max(bounds.items(), key=lambda kv: kv[1])
    plan.duration_s = round(seconds, 1)
    plan.duration_bound = bound


def _warnings(
    plan: Plan,
    recipe: Recipe,
    lacking: Mapping[tuple[str, ...], _Places],
    failing: Mapping[str, int],
    over_window: int,
    window: int | None,
) -> None:
    for names, places in lacking.items():
        plan.warnings.append(
            f"{places.count} record(s) lack the prompt variable(s) {', '.join(names)} "
            f"({places}): they will be error rows unless the template guards them"
        )
    for message, count in failing.items():
        plan.warnings.append(f"{count} sampled record(s) fail to render: {message}")
    if plan.unreadable:
        plan.warnings.append(f"{plan.unreadable} record(s) cannot be read: they will be error rows")
    if over_window and window is not None:
        plan.warnings.append(
            f"{over_window} of {plan.sampled} sampled prompt(s) need more than {plan.model}'s "
            f"context window of {window} tokens (prompt plus the output ceiling)"
        )
    elif window is None and plan.model:
        plan.warnings.append(f"context window of {plan.model!r} unknown: not checked")


def format_plan(plan: Plan) -> str:
    """The plan as text for a person."""

    def money(value: float | None) -> str:
        if value is None:
            return "unknown"
        return f"${value:,.2f}" if value >= 1 else f"${value:.4g}"

    done = "unknown" if plan.done is None else f"{plan.done:,}"
    lines = [
        f"recipe:    {plan.recipe}",
        f"model:     {plan.model or 'unknown'} ({plan.mode} mode)",
        f"records:   {plan.records:,} ({done} already done, {plan.to_send:,} to send"
        + (f", {plan.unreadable:,} unreadable" if plan.unreadable else "")
        + ")",
        f"tokens:    ~{plan.input_tokens:,} input, ~{plan.output_tokens_typical:,} output "
        f"typical, {plan.output_tokens_max:,} at most "
        f"({plan.token_method}; from {plan.sampled:,} sampled prompt(s))",
        f"cost:      {money(plan.cost_usd_low)} to {money(plan.cost_usd_high)}",
        "duration:  "
        + (
            plan.duration_bound
            if plan.duration_s is None
            else f"~{_human(plan.duration_s)} (set by {plan.duration_bound})"
        ),
    ]
    for i, messages in enumerate(plan.prompts, 1):
        lines.append(f"--- prompt {i} ---")
        for m in messages:
            content = m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
            lines.append(f"[{m['role']}] {content.rstrip()}")
    for step in plan.steps:
        lines.append(
            f"step {step['name']}: ~{step['input_tokens']:,} input, "
            f"{step['output_tokens_max']:,} output at most, "
            f"{money(step['cost_usd_low'])} to {money(step['cost_usd_high'])} "
            f"({step['model'] or 'unknown model'})"
        )
    lines += [f"endpoint:  {e}" for e in plan.endpoints]
    if plan.env:
        lines.append(f"env:       {', '.join(plan.env)} (read into the recipe beyond its keys)")
    lines += [f"code:      {c}" for c in plan.code]
    if plan.warnings:
        lines.append("warnings:")
        lines.extend(f"  - {w}" for w in plan.warnings)
    return "\n".join(lines)


def _human(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{math.ceil(hours / 24)} days"
