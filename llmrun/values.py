"""The values that flow through a run: source records, prompts, replies, rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from .access import Access


@dataclass(slots=True)
class SourceRecord:
    """What a loader yields: the record's fields, or why it could not be read.

    ``where`` locates the record in its source (``reviews.jsonl:12``) for error messages and, when
    the record has no id, as its id.
    """

    data: dict[str, Any] | None
    where: str
    error: str | None = None


@dataclass(slots=True, frozen=True)
class Prompt:
    """A rendered request, before any provider turns it into its wire format.

    ``messages`` are ``{"role": ..., "content": ...}`` in OpenAI's roles (system, developer,
    user, assistant). ``content`` is a string, or a list of parts in llmrun's neutral form,
    which each provider converts to its own:

    - ``{"type": "text", "text": "..."}``
    - ``{"type": "image", "source": "...", "detail": "auto" | "low" | "high" | None}`` where
      ``source`` is an absolute local path, an ``http(s)://`` URL, or a ``data:`` URL
      (``llmrun.load_image`` reads and checks them).

    ``body`` is set for a request taken whole from the record (an OpenAI request file): an
    OpenAI-shaped provider sends it unchanged; others use ``messages`` and ``generation``.

    ``group`` is set only for providers that answer several records in one request (see
    ``GroupingProvider``): the member prompts, in order; ``messages`` is then empty.
    """

    record_id: str
    messages: list[dict[str, Any]]
    generation: Mapping[str, Any]
    group: tuple[Prompt, ...] = ()
    # A whole request body from the record (``prompt: {messages: record}``), for a provider of
    # that wire format to send as it is; None for a prompt rendered from templates.
    body: Mapping[str, Any] | None = None


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them (None when it did not)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    images: int | None = None  # images generated (priced per image where tokens are not)

    @property
    def total_tokens(self) -> int:
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def to_json(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.cached_tokens is not None:
            out["cached_tokens"] = self.cached_tokens
        if self.reasoning_tokens is not None:
            out["reasoning_tokens"] = self.reasoning_tokens
        if self.images is not None:
            out["images"] = self.images
        return out


@dataclass(slots=True)
class Reply:
    """A provider's answer, normalized so nothing downstream cares who answered.

    ``finish_reason`` is one of "stop", "length", "tool_calls", "content_filter", "other".
    ``tool_calls`` are ``{"id", "name", "arguments"}`` with ``arguments`` parsed from JSON when
    it parses (else the string). ``parsed`` is the structured value when the request asked for
    JSON (``response_format``) and the text parsed; ``vector`` is an embedding.
    """

    text: str | None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    request_id: str | None = None
    choices: list[str | None] | None = None  # every choice's text when n > 1
    tool_calls: list[dict[str, Any]] | None = None
    parsed: Any = None
    vector: list[float] | None = None
    raw: Any = None
    first_token_s: float | None = None  # streamed: seconds from sending to the first event
    images: list[dict[str, Any]] | None = None  # generated: {path, revised_prompt} (or url)

    def to_json(self, *, keep_raw: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_json(),
            "model": self.model,
            "request_id": self.request_id,
        }
        if self.choices is not None:
            out["choices"] = self.choices
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.parsed is not None:
            out["parsed"] = self.parsed
        if self.vector is not None:
            out["vector"] = self.vector
        if self.first_token_s is not None:
            out["first_token_s"] = round(self.first_token_s, 4)
        if self.images is not None:
            out["images"] = self.images
        if keep_raw:
            out["raw"] = self.raw
        return out


@dataclass(slots=True)
class Result:
    """What a postprocessor chain works on: the reply's text and the fields derived from it."""

    text: str | None
    fields: dict[str, Any]
    reply: Reply
    record: Mapping[str, Any]


@dataclass(frozen=True)
class ComponentContext:
    """What every component is told about the recipe it serves."""

    base_dir: Path  # the recipe's folder: relative paths resolve against it
    recipe_name: str
    warn: Callable[[str], None] = field(default=lambda message: None)
    # The user's opt-ins (llmrun.access): which folders beyond base_dir a component may read,
    # whether code the recipe names may run. The default allows neither.
    access: Access = field(default_factory=Access)
    # The run's output file, for a component that writes files beside it (generated images);
    # None outside a run (validate, plan).
    output: Path | None = None

    def readable(self, path: Path | str, what: str) -> Path:
        """``path`` resolved against the recipe's folder, or OutsideError (a ValueError) when
        it leaves the folders the recipe may read (symlinks resolved)."""
        return self.access.scope(self.base_dir).check(path, what)


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fields": {"a": 1}}`` -> ``{"fields.a": 1}``; lists and empty objects stay values."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# -- what the observer hooks receive (hookspecs.py) -------------------------------------------


class RowError(TypedDict, total=False):
    """An error row's ``error`` (docs/output.md)."""

    type: str
    message: str
    retryable: bool
    status: int
    where: str


class _RowKeys(TypedDict):
    """The keys every row has (``Row``)."""

    id: str
    status: Literal["ok", "error"]
    text: str | None
    fields: dict[str, Any]
    error: RowError | None
    response: dict[str, Any] | None
    record: dict[str, Any] | None
    attempts: int
    latency_s: float | None
    cost_usd: float | None
    cached: bool  # answered from the call cache: nothing was sent
    key: str | None  # the fingerprint of the key that answered (``key#1a2b3c4d``)
    started_at: str
    finished_at: str
    recipe_hash: str


class Row(_RowKeys, total=False):
    """An output row, as written and as ``record_done`` receives it (docs/output.md): the keys
    of every row, and ``steps`` in a recipe with ``steps:``."""

    steps: dict[str, Any]  # every step's result, by name (run/steps.py)


class _Fields(Mapping[str, Any]):
    """Read a frozen dataclass's fields as a mapping too: observers written for the plugin API's
    first version read ``run["recipe"]``; typed ones read ``run.recipe``."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)  # type: ignore[attr-defined]


@dataclass(frozen=True, eq=False)
class RunStart(_Fields):
    """What ``run_started`` receives: the run about to send its first record."""

    recipe: str  # the recipe's name
    recipe_hash: str
    output: str
    provider: str
    model: str | None
    resumed: int  # rows already in the output
    started_at: str  # ISO 8601


@dataclass(frozen=True, eq=False)
class RunEnd(_Fields):
    """What ``run_finished`` receives: how the run ended (also ``llmrun run --json``)."""

    status: Literal["completed", "interrupted", "aborted", "budget"]
    reason: str | None
    output: str
    ok: int
    error: int
    resumed_ok: int
    resumed_error: int
    total: int | None
    retries: int
    cached: int  # rows answered from the call cache
    retries_by_code: dict[str, int]
    errors_by_code: dict[str, int]
    cost_usd: float
    job_cost_usd: float
    tokens: dict[str, int]  # {"input": N, "output": N}
    elapsed_s: float
    warnings: list[str]
    # provider.base_urls: {url: {"ok": N, "failed": N}} (attempts), empty without a pool
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
