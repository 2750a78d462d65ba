"""The batch half of the provider contract: what a provider offers to run records in bulk.

A provider with a batch API has a method ``batch_api()`` returning an object that implements
``BatchAPI``. The batch runner (``llmrun.batch.runner``) drives it through one life cycle per
batch file::

    line() per record -> file on disk -> upload() -> create() -> get() until ended
                      -> download() -> parse_result() per line -> rows in the output

Every step is recorded durably by the runner before the next one starts, so a plugin only has to
do each step once, and ``find()`` lets the runner adopt a batch whose creation was sent but never
recorded (the process died in between).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

from ..values import Prompt, Reply

# A request extension (``extensions={BATCH_RESULTS: True}``) for ``download()``'s requests: the
# answer is a results file, bounded by ``run.batch_max_results_bytes`` rather than by
# ``run.max_response_bytes`` as every other batch API answer is.
BATCH_RESULTS = "llmrun.batch_results"

# Normalized batch states. "ended" covers every terminal state: see ``BatchInfo.outcome``.
BatchState = Literal["validating", "in_progress", "finalizing", "cancelling", "ended"]
BatchOutcome = Literal["completed", "failed", "expired", "cancelled"]


@dataclass(slots=True)
class BatchInfo:
    """What the provider says about one batch."""

    id: str
    state: BatchState
    outcome: BatchOutcome | None = None  # set once ``state == "ended"``
    counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed, ...
    reason: str | None = None  # why a batch failed as a whole, in the provider's words
    created_at: float | None = None  # unix seconds
    tag: str | None = None  # llmrun's idempotency tag, when the provider keeps metadata
    downloads: dict[str, str] = field(default_factory=dict)  # what download() fetches

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "outcome": self.outcome,
            "counts": dict(self.counts),
            "reason": self.reason,
            "created_at": self.created_at,
            "tag": self.tag,
            "downloads": dict(self.downloads),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchInfo:
        return cls(
            id=str(data["id"]),
            state=data["state"],
            outcome=data.get("outcome"),
            counts=dict(data.get("counts") or {}),
            reason=data.get("reason"),
            created_at=data.get("created_at"),
            tag=data.get("tag"),
            downloads=dict(data.get("downloads") or {}),
        )


@dataclass(slots=True)
class LineResult:
    """One result line, normalized: a reply, or an error saying whether to submit again."""

    custom_id: str
    reply: Reply | None = None
    code: str | None = None  # error code when reply is None
    message: str | None = None
    retryable: bool = False  # expired, server error, rate limited: worth submitting again
    status: int | None = None


@runtime_checkable
class BatchAPI(Protocol):
    """A provider's batch API. ``client`` is an ``httpx.AsyncClient`` owned by the runner;
    ``api_key`` is the recipe's first key (or None). Failures raise ``CallError``, classified
    as for direct calls (``llmrun.classify_http``)."""

    max_requests: int  # requests per batch, the provider's limit
    max_bytes: int  # bytes per batch input, the provider's limit
    custom_id_pattern: str  # a regular expression every custom_id must match

    def line(self, custom_id: str, prompt: Prompt) -> dict[str, Any]:
        """One request line of the batch input (JSON-serializable)."""
        ...

    async def upload(
        self, client: httpx.AsyncClient, api_key: str | None, path: Path, tag: str
    ) -> str | None:
        """Upload the input file (JSONL of ``line()``s); return its id, or None when the
        provider takes the requests inline in ``create``."""
        ...

    async def create(
        self,
        client: httpx.AsyncClient,
        api_key: str | None,
        path: Path,
        input_id: str | None,
        tag: str,
    ) -> BatchInfo:
        """Create the batch; ``tag`` is kept with it where the provider allows (metadata)."""
        ...

    async def find(
        self,
        client: httpx.AsyncClient,
        api_key: str | None,
        tag: str,
        since: float,
        requests: int,
        known: Sequence[str],
    ) -> BatchInfo | None:
        """The batch created with ``tag`` (on or after unix time ``since``, ``requests``
        lines, not one of ``known``), if the provider has it; None if it was never created."""
        ...

    async def get(self, client: httpx.AsyncClient, api_key: str | None, batch_id: str) -> BatchInfo:
        """The batch's current state."""
        ...

    async def download(
        self, client: httpx.AsyncClient, api_key: str | None, info: BatchInfo, dest: Path
    ) -> None:
        """Write every result line of an ended batch (successes and errors) to ``dest``."""
        ...

    def parse_result(self, line: Mapping[str, Any]) -> LineResult:
        """One downloaded line, normalized."""
        ...

    async def cancel(
        self, client: httpx.AsyncClient, api_key: str | None, batch_id: str
    ) -> BatchInfo:
        """Ask the provider to cancel the batch; what finished stays downloadable."""
        ...


def batch_api_of(provider: object) -> BatchAPI | None:
    """The provider's batch API, or None when it has none."""
    make = getattr(provider, "batch_api", None)
    if make is None:
        return None
    api = make()
    return api if isinstance(api, BatchAPI) else None
