"""The postprocessor chain on a reply, with reasks: a postprocessor that rejects a reply with
feedback (and allows reasks) gets the reply and the feedback sent back as a follow-up turn,
and the whole chain runs again on the new reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ..components import Postprocessor
from ..errors import RecordError
from ..job.records import Work
from ..job.rows import RowMaker
from ..values import Prompt, Result, Row, RowError, Usage
from .calls import Outcome

Call = Callable[[Work, Prompt], Awaitable["Outcome | Row"]]


async def postprocess(
    work: Work,
    prompt: Prompt,
    outcome: Outcome,
    *,
    posts: Sequence[Postprocessor],
    rows: RowMaker,
    call: Call,
    keep_raw: bool,
) -> Row:
    """The record's row after the chain. ``call`` makes a follow-up call (the outcome, or the
    record's error row when it failed); extra calls add to the row's attempts, usage and cost."""
    assert work.data is not None
    reply, attempts, reasks = outcome.reply, outcome.attempts, 0
    usage = reply.usage  # copied before the first reask adds to it
    cost = 0.0 if outcome.cached else rows.cost(reply)  # a cached reply was paid for before
    cached = outcome.cached  # every call of the row answered from the call cache
    while True:
        response = reply.to_json(keep_raw=keep_raw)
        if reasks:
            response["usage"] = usage.to_json()  # every call made for this record
            response["reasks"] = reasks
        result = Result(reply.text, {}, reply, work.data)
        error: RowError | None = None
        feedback: str | None = None  # a reask's
        for post in posts:
            try:
                post(result)
            except RecordError as exc:
                asked = getattr(exc, "feedback", None)
                if asked and reasks < int(getattr(post, "reask", 0) or 0):
                    feedback = str(asked)
                else:
                    error = rows.error(work, exc.code, str(exc))
            except Exception as exc:
                error = rows.error(work, "internal", f"postprocessor: {type(exc).__name__}: {exc}")
            else:
                continue
            break
        if feedback is None:
            # On error the reply stays in the row so `repost` can try again without paying.
            return rows.row(
                work,
                attempts,
                outcome.latency_s,
                text=None if error else result.text,
                fields=None if error else result.fields,
                error=error,
                response=response,
                cost=cost,
                cached=cached,
                key=outcome.key,
            )
        reasks += 1
        prompt = Prompt(
            prompt.record_id,
            [
                *prompt.messages,
                {"role": "assistant", "content": reply.text or ""},
                {"role": "user", "content": feedback},
            ],
            prompt.generation,
        )
        again = await call(work, prompt)
        if isinstance(again, dict):  # the follow-up failed: keep the last reply
            again["attempts"] += attempts
            again["response"], again["cost_usd"] = response, cost
            return again
        if reasks == 1:
            usage = Usage(**{k: getattr(usage, k) for k in Usage.__slots__})
        outcome, reply = again, again.reply
        attempts += again.attempts
        for k in Usage.__slots__:
            mine, theirs = getattr(usage, k), getattr(reply.usage, k)
            if theirs is not None:
                setattr(usage, k, (mine or 0) + theirs)
        cached = cached and again.cached
        more = 0.0 if again.cached else rows.cost(reply)
        cost = None if cost is None or more is None else cost + more
