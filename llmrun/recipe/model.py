"""The validated recipe as values: ``Recipe``, its ``RunSettings`` and ``ComponentSpec``s.

Every other module of ``recipe/`` (templates, selection, keys) reads these; ``load.py`` builds
them. Keeping them apart from the loader keeps the imports of this package one way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..access import Access
from .guards import KeyRoute


@dataclass(frozen=True)
class ComponentSpec:
    """A component chosen by a recipe: its name, options, and where the section is."""

    name: str
    options: Mapping[str, Any]
    where: str  # key path in the recipe, for messages


@dataclass(frozen=True)
class RunSettings:
    concurrency: int
    max_retries: int
    timeout_s: float
    connect_timeout_s: float
    drain_s: float
    requests_per_minute: float | None
    # Batch mode (docs/batch.md); defaults so code building RunSettings by hand keeps working.
    mode: str = "direct"  # direct | batch | auto
    batch_max_requests: int | None = None  # per batch file; None: the provider's limit
    batch_max_bytes: int | None = None
    batch_poll_s: float = 30.0  # first poll interval; grows 1.5x while nothing changes
    batch_poll_max_s: float = 600.0
    batch_resubmits: int = 2  # times a failed or expired request is submitted again
    auto_threshold: int = 1000  # auto mode: fewer records than this go direct
    auto_deadline_s: float = 21600.0  # auto mode: a batch running longer is cancelled
    tokens_per_minute: float | None = None
    adaptive: bool = False  # on by default when no explicit limit is set (see load_recipe)
    # run.adaptive: true, written out: the slow start even when the endpoint is local
    slow_start_local: bool = False
    budget_usd: float | None = None
    # The largest answer body, as received and once decoded (llmrun.wire.bounds).
    max_response_bytes: int = 64 * 1024 * 1024
    # Batch mode: the largest results file downloaded (read whole, as received and decoded).
    batch_max_results_bytes: int = 1024 * 1024 * 1024
    engine: str = "local"  # run.engine: this process, or a plugin's engine (ray)
    workers: int | None = None  # run.workers: an engine's worker processes (None: its default)

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


DEFAULT_CACHE_GB = 10.0


@dataclass(frozen=True)
class Endpoint:
    """One server of a pool (``provider.base_urls``, or ``provider.endpoints`` with its own keys
    and limits): a replica or a region, each with its own capacity and quota."""

    url: str
    # Its own keys (a region's); empty: the provider's. Never in a repr, a log or a hash.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    requests_per_minute: float | None = None  # None: run.requests_per_minute
    tokens_per_minute: float | None = None  # None: run.tokens_per_minute


@dataclass(frozen=True)
class CacheSettings:
    """The call cache (``cache:`` in a recipe, ``--cache`` on the command line)."""

    path: Path
    max_bytes: int = int(DEFAULT_CACHE_GB * 1e9)
    sampled: bool = False  # also cache requests whose answers are drawn at random


@dataclass(frozen=True)
class StepSpec:
    """One step of a multi-step recipe (``steps:``, docs/steps.md)."""

    name: str
    messages: tuple[tuple[str, Any], ...]  # as Recipe.messages
    generation: Mapping[str, Any]  # the recipe's, with the step's merged over it
    postprocess: tuple[ComponentSpec, ...]
    provider_options: Mapping[str, Any]  # the step's changes to the provider's options
    when: str | None = None  # a Jinja expression over the record and earlier steps
    n: int = 1  # samples drawn
    select: tuple[str, str | None] = ("first", None)  # ("first", None) | ("max"|"min", field)
    reads: tuple[str, ...] = ()  # the earlier steps its templates and `when` name
    images: tuple[str, ...] = ()
    image_detail: str | None = None
    examples: Mapping[str, Any] | None = None
    hash: str = ""  # what decides its results, with the hashes of the steps before it


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Paths are absolute; ``secrets`` must be redacted from any output."""

    path: Path
    name: str
    data: ComponentSpec
    id_field: str | None
    limit: int | None
    messages: tuple[tuple[str, Any], ...]  # (role, template source, or a tuple of parts)
    provider: ComponentSpec
    api_keys: tuple[str, ...]
    generation: Mapping[str, Any]
    run: RunSettings
    postprocess: tuple[ComponentSpec, ...]
    output_path: Path
    writer: ComponentSpec
    include: str | tuple[str, ...]
    keep_raw: bool
    secrets: frozenset[str]
    prices: Mapping[str, Any]  # model -> {input, output, cached_input} USD per 1M tokens
    job_hash: str  # hash of what decides the results (not run settings, never secrets)
    # Record selection (llmrun/recipe/selection.py); `limit` above is part of it.
    offset: int = 0
    sample: float | int | None = None
    seed: int = 0
    filter: str | None = None
    shard: tuple[int, int] | None = None
    # Prompt images: templates rendering to a path/URL per record, attached to the last user
    # message; and the detail asked for them.
    images: tuple[str, ...] = ()
    image_detail: str | None = None
    examples: Mapping[str, Any] | None = None  # few-shot turns: {path, user, assistant}
    request_prompt: bool = False  # prompt: {messages: record}: each record is its request
    # provider.base_urls / provider.endpoints: replicas of one model (or regions), each request
    # to the one that can start soonest
    endpoints: tuple[Endpoint, ...] = ()
    cache: CacheSettings | None = None  # the call cache; off when None
    # steps: several calls per record, in order; empty for a one-call recipe. The recipe's
    # messages, images and examples are then the first step's (validate and plan use them).
    steps: tuple[StepSpec, ...] = ()
    # What the user allowed beyond the recipe (llmrun.access), and what the recipe reaches
    # (recipe.guards): where each key goes, the variables it declared, the code it names.
    access: Access = field(default_factory=Access)
    key_routes: tuple[KeyRoute, ...] = ()
    env_names: tuple[str, ...] = ()
    code: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def first_key(self) -> str | None:
        """The key of the provider's own base_url, for what goes to one endpoint only (batch
        mode): the first endpoint's own key when provider.endpoints gives it one (that
        endpoint is the base_url), else the provider's first."""
        own = self.endpoints[0].api_keys if self.endpoints else ()
        keys = own or self.api_keys
        return keys[0] if keys else None


def freeze(value: Any) -> Any:
    """Deeply immutable copy: dicts become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON-ready copy of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value
