"""``llmrun repost``: run the (changed) postprocessor chain again on the replies stored in the
output, without calling anything, and replace the output atomically.

Rows that were ``ok`` or failed in a postprocessor are redone from their ``response``; rows
without a stored reply (the call failed, the input was unreadable) are kept unchanged, so the
next ``run`` still treats them as finished. The output is rewritten through its writer
(``job.output.rewrite_output``: JSONL, the parquet folder, any writer with ``rewrite``); the
old one is kept in the state folder as ``before-repost-<time><suffix>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..components import Postprocessor
from ..errors import RecipeError, RecordError
from ..job.output import rewrite_output, rewriter
from ..job.store import RunState, now_iso
from ..plugins import Registry, build_component
from ..recipe.model import Recipe, StepSpec
from ..recipe.provenance import call_hash
from ..redaction import Redactor
from ..values import ComponentContext, Reply, Result, Usage

REDONE_ERRORS = ("postprocess", "internal")  # error types that a new chain may fix
PENDING = "steps_pending"  # a steps: row whose later steps must be called again
StepPosts = tuple[StepSpec, list[Postprocessor]]


@dataclass
class RepostSummary:
    """What ``repost`` did."""

    output: str
    redone: int = 0  # rows the chain ran on
    ok: int = 0  # of those, now ok
    error: int = 0  # of those, now errors
    changed: int = 0  # of those, rows whose status, text or fields changed
    kept: int = 0  # rows left alone (no stored reply to work on)
    unreadable: int = 0  # damaged rows kept as they were (the writer's ``unreadable``)
    errors_in_output: int = 0  # error rows in the new output, redone or not
    pending: int = 0  # steps: records whose later steps must be called again (--retry-errors)
    previous: str = ""  # where the old output was kept ("": no row changed, none was kept)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def repost(recipe: Recipe, registry: Registry, *, force: bool = False) -> RepostSummary:
    """Rerun the recipe's postprocessors over its output; raise LockedError while a run writes,
    and RecipeError when the calls changed since the replies were made (unless ``force``)."""
    output = recipe.output_path
    redact = Redactor({*recipe.secrets, *recipe.api_keys})
    summary = RepostSummary(str(output))

    def warn(message: str) -> None:
        summary.warnings.append(redact(message))

    context = ComponentContext(recipe.base_dir, recipe.name, warn, recipe.access)
    writer = rewriter(
        build_component(registry, "writer", recipe.writer, context), recipe.writer.name
    )
    if not output.exists():
        raise RecipeError(f"no output at {output}: run the recipe first")
    posts: list[Postprocessor] = [
        build_component(registry, "postprocessor", spec, context) for spec in recipe.postprocess
    ]
    steps = [
        (step, [build_component(registry, "postprocessor", s, context) for s in step.postprocess])
        for step in recipe.steps
    ]
    state = RunState(output)
    with state.locked():
        made_by = (state.read_manifest() or {}).get("call_hash")
        if made_by and made_by != call_hash(recipe) and not force:
            raise RecipeError(
                f"the recipe's data, prompt, provider or generation changed since the replies in "
                f"{output.name} were made: they answer the old recipe. repost applies only a "
                "changed postprocess chain; use `llmrun run --fresh` to call again, or "
                "`repost --force` if the change cannot alter the replies"
            )

        def edit(row: Mapping[str, Any]) -> Mapping[str, Any]:
            return _redo(row, posts, recipe.job_hash, redact, summary, steps)

        kept = rewrite_output(writer, state, edit, "before-repost")
        summary.previous = "" if kept is None else str(kept)
        summary.unreadable = int(getattr(writer, "unreadable", 0))
        _update_manifest(state, recipe, summary)
    return summary


def _redo(
    row: Mapping[str, Any],
    posts: list[Postprocessor],
    job_hash: str,
    redact: Callable[[str], str],
    summary: RepostSummary,
    steps: Sequence[StepPosts] = (),
) -> Mapping[str, Any]:
    """The row the new output holds for ``row`` (``row`` itself when there is nothing to
    redo), counted into ``summary``."""
    new = (
        redo_row(row, posts, job_hash, redact)
        if not steps
        else redo_steps_row(row, steps, job_hash, redact)
    )
    if new is None:
        summary.kept += 1
        if row.get("status") != "ok":
            summary.errors_in_output += 1
        return row
    if new.get("error", {}) and new["error"].get("type") == PENDING:
        summary.pending += 1
    summary.redone += 1
    if new["status"] == "ok":
        summary.ok += 1
    else:
        summary.error += 1
        summary.errors_in_output += 1
    if any(new[k] != row.get(k) for k in ("status", "text", "fields")):
        summary.changed += 1
    return new


def redo_row(
    row: Mapping[str, Any],
    posts: list[Postprocessor],
    job_hash: str,
    redact: Callable[[str], str] = str,
) -> dict[str, Any] | None:
    """The row with the chain run again on its stored reply, or None to leave it as it is."""
    response = row.get("response")
    old_error = row.get("error") if isinstance(row.get("error"), dict) else {}
    assert isinstance(old_error, dict)
    if not isinstance(response, dict):
        return None
    if row.get("status") != "ok" and old_error.get("type") not in REDONE_ERRORS:
        return None  # the call itself failed: nothing here to work on
    reply = reply_from_json(response)
    record = row.get("record")
    result = Result(reply.text, {}, reply, record if isinstance(record, dict) else {})
    error: dict[str, Any] | None = None
    for post in posts:
        try:
            post(result)
        except RecordError as exc:  # a reask would need a call: here it is an error
            error = {"type": exc.code, "message": redact(str(exc)), "retryable": False}
        except Exception as exc:
            message = redact(f"postprocessor: {type(exc).__name__}: {exc}")
            error = {"type": "internal", "message": message, "retryable": False}
        else:
            continue
        break
    if error is not None and "where" in old_error:
        error["where"] = old_error["where"]
    new = dict(row)
    new.update(
        status="ok" if error is None else "error",
        text=None if error else result.text,
        fields={} if error else result.fields,
        error=error,
        recipe_hash=job_hash,
    )
    return new


def redo_steps_row(
    row: Mapping[str, Any],
    steps: Sequence[StepPosts],
    job_hash: str,
    redact: Callable[[str], str] = str,
) -> dict[str, Any] | None:
    """A ``steps:`` row with each step's chain run again on that step's stored reply, in
    order. A later step asked with what an earlier step's chain gave cannot be redone without
    a call: when an earlier result changes (or a failed step now passes) and a later step read
    it, the row becomes a ``steps_pending`` error row that keeps the steps up to there, so
    ``llmrun run --retry-errors`` calls only the steps from that one on."""
    results = row.get("steps")
    if not isinstance(results, dict):
        return None
    new_steps: dict[str, Any] = {}
    changed: set[str] = set()
    pending: str | None = None  # the first step that must be called again
    why = ""
    last: dict[str, Any] | None = None
    for spec, posts in steps:
        old = results.get(spec.name)
        if not isinstance(old, dict):
            if last is not None and last.get("status") == "ok":
                # The record had ended at a failed step, which passes now.
                pending, why = spec.name, "the step before it passes now"
            break
        stale = sorted(set(spec.reads) & changed)
        if stale:
            pending, why = spec.name, f"it reads steps.{stale[0]}, which changed under repost"
            break
        if old.get("status") == "skipped":
            new_steps[spec.name] = {**old, "hash": spec.hash}
            continue
        redone = redo_row({**old, "record": row.get("record")}, posts, job_hash, redact)
        result = dict(old, hash=spec.hash)
        if redone is not None:
            result.update({k: redone[k] for k in ("status", "text", "fields", "error")})
            if any(result.get(k) != old.get(k) for k in ("status", "text", "fields")):
                changed.add(spec.name)
        new_steps[spec.name] = result
        last = result
        if result.get("status") != "ok":
            break  # a failed step ends the record: the steps after it are not its result
    new = dict(row)
    new["steps"] = new_steps
    new["recipe_hash"] = job_hash
    if pending is not None:
        message = (
            f"step {pending} must be called again: {why}; run `llmrun run --retry-errors` "
            "(the steps before it are kept, not called again)"
        )
        new.update(
            status="error",
            text=None,
            fields={},
            error={"type": PENDING, "message": message, "retryable": True},
            response=(last or {}).get("response"),
        )
        return new
    if last is None:
        return None  # nothing ran that a chain could redo
    new.update(
        status=last.get("status"),
        text=last.get("text"),
        fields=last.get("fields") or {},
        error=last.get("error"),
        response=last.get("response"),
    )
    return new


def reply_from_json(response: Mapping[str, Any]) -> Reply:
    """The ``Reply`` a row's ``response`` was made from (``raw`` only when it was kept)."""
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return Reply(
        text=response.get("text"),
        finish_reason=response.get("finish_reason"),
        usage=Usage(**{k: usage.get(k) for k in Usage.__slots__}),
        model=response.get("model"),
        request_id=response.get("request_id"),
        choices=response.get("choices"),
        tool_calls=response.get("tool_calls"),
        parsed=response.get("parsed"),
        vector=response.get("vector"),
        raw=response.get("raw"),
    )


def _update_manifest(state: RunState, recipe: Recipe, summary: RepostSummary) -> None:
    manifest = state.read_manifest() or {}
    manifest["recipe_hash"] = recipe.job_hash  # the rows now follow this recipe
    manifest["call_hash"] = call_hash(recipe)
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    assert isinstance(counts, dict)
    rows = summary.redone + summary.kept
    counts.update(ok=rows - summary.errors_in_output, error=summary.errors_in_output)
    manifest["counts"] = counts
    manifest["updated_at"] = now_iso()
    entry = {
        "at": now_iso(),
        "redone": summary.redone,
        "ok": summary.ok,
        "error": summary.error,
        "kept": summary.kept,
        "previous": summary.previous,
    }
    manifest["reposts"] = [*manifest.get("reposts", [])[-49:], entry]
    state.write_manifest(manifest)
