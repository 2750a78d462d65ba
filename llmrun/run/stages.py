"""A record's stages: render -> call -> post-process, each ending in an output row on failure.

The public stage API that direct mode (``engine.py``), batch mode (``batch/runner.py``) and the
server share: each stage returns its product or, when the record cannot go on, the record's
error row. Writing rows is not a stage of a record: ``job.output.RowSink`` does it for all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import anyio

from ..components import Postprocessor, Provider
from ..errors import RecordError, RunAborted
from ..job.records import Work
from ..job.rows import RowMaker
from ..recipe.model import Recipe
from ..recipe.templates import PromptTemplate
from ..values import Prompt, Row
from .calls import Caller, CallFailed, NotSent, Outcome
from .chain import postprocess


class Stages:
    """The stages of one recipe, bound to the run's Caller (keys, pace, retries, budget)."""

    def __init__(
        self,
        recipe: Recipe,
        provider: Provider,
        posts: Sequence[Postprocessor],
        template: PromptTemplate,
        rows: RowMaker,
        caller: Caller,
    ) -> None:
        self.recipe = recipe
        self.provider = provider
        self.posts = posts
        self.template = template
        self.rows = rows
        self.caller = caller
        self.group_size = int(getattr(provider, "group_size", 1) or 1)

    def error_row(
        self,
        work: Work,
        code: str,
        message: str,
        *,
        attempts: int = 0,
        retryable: bool = False,
        status: int | None = None,
    ) -> Row:
        """The record's error row (the message redacted, where it is in the input named)."""
        error = self.rows.error(work, code, message, retryable, status)
        return self.rows.row(work, attempts, error=error)

    def render(self, work: Work, extra: Mapping[str, Any] | None = None) -> Prompt | Row:
        """The record's prompt, or its error row when it cannot be sent. ``extra``: more
        variables for the templates than the record's own (a step's ``steps``)."""
        if work.error is not None:
            return self.error_row(work, "bad_input", work.error)
        assert work.data is not None
        try:
            data = work.data if extra is None else {**work.data, **extra}
            return self.template.render(work.id, data)
        except RecordError as exc:
            return self.error_row(work, exc.code, str(exc))

    async def call(self, work: Work, prompt: Prompt, sample: int = 0) -> Outcome | Row:
        """The call's outcome, or the record's error row (RunAborted and NotSent propagate)."""
        try:
            return await self.caller.call(prompt, provider=self.provider, sample=sample)
        except CallFailed as failed:
            err = failed.error
            return self.error_row(
                work,
                err.code,
                err.message,
                attempts=failed.attempts,
                retryable=err.retryable,
                status=err.status,
            )
        except RecordError as exc:  # the provider cannot build this record's request (an image)
            return self.error_row(work, exc.code, str(exc))
        except (RunAborted, NotSent, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:  # a provider plugin's bug must not take the run down
            return self.error_row(work, "internal", describe(exc), attempts=1)

    def postprocess(self, work: Work, prompt: Prompt, outcome: Outcome) -> Awaitable[Row]:
        """Run the chain on the reply (with reasks, see chain.py): the record's row, to await.
        Not a coroutine of its own: this runs for every record, and a layer costs."""
        return postprocess(
            work,
            prompt,
            outcome,
            posts=self.posts,
            rows=self.rows,
            call=self.call,
            keep_raw=self.recipe.keep_raw,
        )

    async def process(
        self, work: Work, extra: Mapping[str, Any] | None = None, sample: int = 0
    ) -> Row:
        """Always a row: ok, or error with a reason (RunAborted and NotSent propagate)."""
        prompt = self.render(work, extra)
        if isinstance(prompt, dict):
            return prompt
        outcome = await self.call(work, prompt, sample)
        if isinstance(outcome, dict):
            return outcome
        return await self.postprocess(work, prompt, outcome)

    async def process_group(self, batch: list[Work]) -> list[Row]:
        """One request for several records (a grouping provider); a row for each."""
        rows: list[Row] = []
        members: list[tuple[Work, Prompt]] = []
        for work in batch:
            prompt = self.render(work)
            if isinstance(prompt, dict):
                rows.append(prompt)
            else:
                members.append((work, prompt))
        if not members:
            return rows
        prompts = [p for _, p in members]
        group = Prompt(prompts[0].record_id, [], prompts[0].generation, group=tuple(prompts))
        outcome = await self.call(members[0][0], group)
        if isinstance(outcome, dict):  # the group failed: each member gets the same error
            failed = outcome["error"]
            assert failed is not None  # a row the call gave back is an error row
            for work, _ in members:
                # each row says where its own record is, not the first member's
                rows.append(
                    self.error_row(
                        work,
                        failed.get("type", "internal"),
                        failed.get("message", ""),
                        attempts=outcome["attempts"],
                        retryable=failed.get("retryable", False),
                        status=failed.get("status"),
                    )
                )
            return rows
        try:
            replies = self.provider.split_reply(outcome.reply, prompts)  # type: ignore[attr-defined]
            if len(replies) != len(prompts):
                raise ValueError(f"{len(replies)} replies for {len(prompts)} inputs")
        except Exception as exc:
            why = f"cannot split the grouped reply: {describe(exc)}"
            for work, _ in members:
                rows.append(self.error_row(work, "internal", why, attempts=outcome.attempts))
            return rows
        for (work, prompt), reply in zip(members, replies, strict=True):
            single = Outcome(
                reply, outcome.attempts, outcome.latency_s, outcome.cached, outcome.key
            )
            rows.append(await self.postprocess(work, prompt, single))
        return rows


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
