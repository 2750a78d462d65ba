"""Every exception llmrun raises on purpose, in one tree.

    LlmrunError                 root: the CLI catches this once and prints ``Type: message``
    ├── RecipeError             the recipe is wrong: one Problem per fault (file:line:col key)
    ├── PluginError             a component is unknown, or its plugin failed to load or register
    ├── LockedError             another run is writing the same output
    ├── RunAborted              the run cannot go on (a rejected key with none left, an unknown
    │                           model, an unreachable endpoint); in-flight records are not
    │                           written and are called again by the next run
    ├── CallError               one provider call failed; ``kind`` says what the engine does:
    │                             "retryable": back off and try again (429, 5xx, timeouts, resets)
    │                             "record":    final for this record: an ``error`` row, no retry
    │                             "key":       this key is rejected: retire it, try another key
    │                             "run":       stop the run (raised onward as RunAborted)
    └── RecordError             final for one record before or after the call: an ``error`` row
        ├── InputError          the loader could not read this record (malformed line, no id)
        ├── TemplateError       the prompt could not be rendered (missing variables)
        └── PostprocessError    a postprocessor rejected the reply (the raw reply is kept)

Record-level errors never escape the engine: they become rows. Only ``RunAborted``,
``LockedError``, ``RecipeError`` and ``PluginError`` reach the caller of ``run_recipe``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

CallErrorKind = Literal["retryable", "record", "key", "run"]


class LlmrunError(Exception):
    """Root of every error llmrun raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One fault in a recipe, located as precisely as the source allows."""

    message: str
    path: str = ""  # dotted key path, e.g. "provider.model" or "postprocess[1]"
    file: str = ""
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = f"{where}: " if where else ""
        key = f"{self.path}: " if self.path else ""
        return f"{prefix}{key}{self.message}"


class RecipeError(LlmrunError):
    """The recipe cannot be used as written."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(LlmrunError):
    """A component is unknown, or the plugin that provides it is broken."""


class LockedError(LlmrunError):
    """Another llmrun process holds the lock on this output."""


class RunAborted(LlmrunError):
    """The run cannot continue; nothing more is sent."""


class CallError(LlmrunError):
    """A provider call failed, classified so the engine knows what to do next."""

    def __init__(
        self,
        message: str,
        *,
        kind: CallErrorKind,
        code: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind: CallErrorKind = kind
        self.code = code  # short machine-readable reason, e.g. "rate_limit", "timeout"
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait, if any

    @property
    def retryable(self) -> bool:
        return self.kind == "retryable"


class RecordError(LlmrunError):
    """Final for one record: becomes an ``error`` row."""

    code = "record_error"


class InputError(RecordError):
    """The loader could not produce this record."""

    code = "bad_input"


class TemplateError(RecordError):
    """The prompt template could not be rendered for this record."""

    code = "template"


class PostprocessError(RecordError):
    """A postprocessor rejected the reply."""

    code = "postprocess"

    def __init__(self, message: str, *, feedback: str | None = None) -> None:
        super().__init__(message)
        # What to tell the model in a follow-up turn when the postprocessor allows reasks.
        self.feedback = feedback
