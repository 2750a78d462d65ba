"""The protocols a component implements: the other half of the plugin contract (hookspecs.py).

A plugin registers a *class* under a name. llmrun validates the recipe's section for that
component against the class's ``options_schema`` (a JSON Schema), then builds it with
``cls(options, context)``. Every component kind is a Protocol, so a plugin need not subclass
anything from llmrun.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from .values import ComponentContext, Prompt, Reply, Result, SourceRecord

JSONSchema = Mapping[str, Any]
# What ``RewritableWriter.rewrite`` asks of each row: the row to keep (the very one it was given,
# or a changed copy), or None to drop it.
RowEdit = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


@runtime_checkable
class Component(Protocol):
    """Every component: a JSON Schema for its options and a constructor taking them."""

    options_schema: ClassVar[JSONSchema]

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None: ...


class Loader(Component, Protocol):
    """Yields records lazily; never reads a whole large source into memory.

    A record that cannot be read is yielded as ``SourceRecord(None, where, error=...)`` so the
    run records it as an error row and goes on.
    """

    def records(self) -> Iterator[SourceRecord]: ...

    def count(self) -> int | None:
        """How many records ``records()`` will yield, if cheap to know (else None)."""
        ...


class Transport(Protocol):
    """Sends one request and returns the response with its body read.

    Failures are raised as ``httpx.TransportError`` subclasses (``ConnectError``,
    ``TimeoutException``, ``RemoteProtocolError``, ...), whatever the transport uses inside.
    """

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response: ...

    async def aclose(self) -> None: ...


class Provider(Component, Protocol):
    """Turns a rendered prompt into one HTTP request and the response into a ``Reply``.

    ``parse_response`` raises ``CallError`` for every failure, classified by kind (see
    ``llmrun.classify_http`` for the shared taxonomy).

    Batch mode: a provider with a batch API also has ``batch_api()`` returning an object
    implementing ``llmrun.BatchAPI`` (upload, create, find, poll, download,
    parse a result line, cancel); it usually builds its lines with ``body(prompt)`` and parses
    results with ``reply_from_body(data)``. Without ``batch_api()``, ``run.mode: batch`` stops
    with a message.

    Rate-limit headers: the key pool reads OpenAI's ``x-ratelimit-limit|remaining|reset-
    requests|tokens`` (a reset in seconds or ``6m0s``). A provider whose API names them
    otherwise has ``rate_limit_headers(headers) -> Mapping[str, str]`` giving them in those
    names; without it, the response's own headers are read.
    """

    model: str

    def build_request(self, prompt: Prompt, api_key: str | None) -> httpx.Request: ...

    def parse_response(self, response: httpx.Response) -> Reply: ...

    def transport(self) -> Transport | None:
        """A transport of the provider's own (the mock answers in-process), or None."""
        ...


@runtime_checkable
class GroupingProvider(Provider, Protocol):
    """A provider answering several records in one request (embeddings).

    The engine gathers up to ``group_size`` prompts and hands ``build_request`` one prompt whose
    ``group`` holds them; ``parse_response`` answers for the whole request (usage in total) and
    ``split_reply`` turns that reply into one per member, in order.
    """

    group_size: int

    def split_reply(self, reply: Reply, prompts: Sequence[Prompt]) -> list[Reply]: ...


class Postprocessor(Component, Protocol):
    """Updates ``result.text`` and/or ``result.fields``; raises ``PostprocessError`` to reject.

    A postprocessor may set an int attribute ``reask``: when it raises a ``PostprocessError``
    with ``feedback`` and reasks are left, the engine sends the reply and the feedback back to
    the model as a follow-up turn and runs the whole chain again on the new reply.
    """

    def __call__(self, result: Result) -> None: ...


class Writer(Component, Protocol):
    """Appends finished rows. The output a writer keeps is what resume reads back.

    ``open`` repairs a torn tail left by a crash and returns the rows already there (lazily), so
    the engine can skip finished records.
    """

    def open(self) -> Iterator[Mapping[str, Any]]: ...

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows and hand them to the OS (a kill -9 right after must not lose them)."""
        ...

    def sync(self) -> None:
        """Make what was written durable (fsync): called periodically and at the end."""
        ...

    def close(self) -> None: ...


class ReadableWriter(Writer, Protocol):
    """A writer that can also read its output back without changing it: ``status``, ``plan``
    and the report read the output through ``read`` (JSONL and the parquet folder do). A writer
    without it still runs; those commands then say they cannot read its output."""

    def read(self) -> Iterator[Mapping[str, Any]]:
        """The rows already in the output, lazily; nothing is repaired or moved (a torn or
        damaged row is skipped: resume sends its record again)."""
        ...


class RewritableWriter(Writer, Protocol):
    """A writer that can also rewrite its output in place: ``llmrun run --retry-errors`` drops
    the error rows through ``rewrite``, ``llmrun repost`` replaces rows by what a changed
    postprocess chain makes of them (JSONL and the parquet folder do). A writer without it
    still runs; those two commands then refuse, naming the method, before anything changes."""

    def rewrite(self, edit: RowEdit, keep: Path) -> bool:
        """Replace the output by its rows as ``edit`` returns them, in the same order: the row
        to keep (the very object it was given, or a changed copy) or None to drop it. True
        when the output was replaced; False, with nothing changed and nothing kept, when
        ``edit`` gave back every row it was given (or there is no output).

        Nothing is ever lost, and a crash at any instant (an exception from ``edit``
        included, which propagates) leaves the old output or the new one whole, never a mix:
        the new output is made aside and made durable first. The old output is kept whole
        at ``keep`` (a path in llmrun's state folder that does not exist yet; a file or a
        folder, as the output is). A row that cannot be read (damaged, or torn by a crash
        mid-write) is never handed to ``edit``: it is left out of the new output or copied
        as it was, and the kept copy still has it. Called under the run's lock, before
        ``open`` and never while rows are being written."""
        ...


@runtime_checkable
class RunEngine(Protocol):
    """Where a recipe's calls run when not in this process (``run.engine: NAME``).

    A class registered with ``register_engines``; llmrun calls its ``build`` classmethod with
    the recipe, the registry and the progress display, and these keywords: ``address`` (the
    cluster ``--address`` named, or None), ``overrides`` (the ``--set`` values, so that workers
    load the same recipe), ``limit``, ``fresh``, ``retry_errors`` and ``handle_signals``. It
    returns the engine that runs the job (``llmrun.engine_api.Engine``, typically one made by
    ``llmrun.engine_api.make_engine`` with ``backends=``: see ``engine_api.Backends``), so the
    output, resume, progress and exit codes are those of any run. A class attribute ``runs_steps =
    True`` says it runs ``steps:`` recipes too (else such a recipe is refused on it).
    """

    @classmethod
    def build(cls, recipe: Any, registry: Any, progress: Any, **options: Any) -> Any: ...
