"""The driver: llmrun's own engine, its records handed to Ray workers by id hash.

    driver: Engine (reader, progress, writer, manifest, stop handling, resume)
              | batches of records, split by hash(id) % workers
              v
    workers: ShardWorker actors, each the recipe's stages with run.concurrency calls at once
              | rows, streamed back as they finish
              v
    driver: the recipe's single output, through its writer (normal format, exactly once)

The engine's workers take records in groups (``GROUP`` per worker process); each group is split
into shards by id hash and each shard's part goes to that shard's worker. A worker that dies
is restarted by Ray (``max_restarts``) and gets the records of its part that no row came back
for; a finished call whose row reached the driver is never made again. The driver writes every
row itself, so its output is the resume source of truth as in one process: killed and started
again, it skips every id in the output and sends the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from llmrun import Recipe, Row, RunAborted, RunSummary
from llmrun.engine_api import (
    Backends,
    Budget,
    Engine,
    KeyPool,
    NotSent,
    Price,
    Progress,
    Registry,
    Stages,
    Work,
    id_hash,
    make_engine,
)

from .limiter import ClusterBudget, RemoteKeyPool, get_budget, get_limiter
from .workers import Item, ShardWorker

# Engine tasks (groups in flight) per worker: two, so a worker has its next group already
# while the last calls of the current one finish.
GROUPS_PER_WORKER = 2
# A worker that dies this many times in a row on the same records stops the run.
MAX_RESTARTS = 5
DIED = (RayActorError, ActorDiedError, ActorUnavailableError)

_remote: Any = ray.remote  # Ray's stubs do not type an actor class made this way
WorkerActor: Any = _remote(max_restarts=-1, max_task_retries=0)(ShardWorker)


def cluster_cpus() -> float:
    """The CPUs the cluster this process joined offers."""
    resources: Any = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("CPU", 1.0))


def shard_of(record_id: str, workers: int) -> int:
    """The worker a record goes to: a stable hash of its id (the same in every run)."""
    return id_hash("ray", record_id) % workers


class Cluster:
    """The job's actors: the limiter and one worker per shard."""

    def __init__(self, recipe: Recipe, overrides: Sequence[str], workers: int) -> None:
        self.recipe = recipe
        self.overrides = list(overrides)
        self.size = workers
        self.limiter = get_limiter(recipe)
        self.workers: list[Any] = []
        self.restarts = 0

    def start_workers(self) -> None:
        cpus = cluster_cpus()
        per_worker = min(1.0, cpus / self.size)
        self.workers = [
            WorkerActor.options(num_cpus=per_worker).remote(
                # No actor handle among the arguments: Ray keeps such arguments in its object
                # store for restarts; the worker finds the limiter by name instead.
                str(self.recipe.path),
                self.overrides,
                self.recipe.access,
            )
            for _ in range(self.size)
        ]
        ray.get([w.ready.remote() for w in self.workers])

    def stop(self) -> None:
        """End the workers (the engine calls this as ``Backends.close`` when the run ends). A
        driver process that exits ends them with it; one that goes on (a notebook, a test) held
        their CPUs on the cluster until its garbage collector dropped the last handle, and the
        next job's workers waited for those CPUs."""
        workers, self.workers = self.workers, []
        for worker in workers:
            # One already gone (killed, its node lost) has nothing left to end.
            with contextlib.suppress(Exception):
                ray.kill(worker)

    # -- the engine's backends ---------------------------------------------------------------

    def key_pool(self, recipe: Recipe) -> KeyPool:
        return RemoteKeyPool(self.limiter, recipe.api_keys, recipe.endpoints)

    def budget(self, limit_usd: float, price: Price, spent_usd: float) -> Budget:
        # The output's spend so far counts once, for the whole cluster.
        actor = get_budget(self.recipe)  # started only for a job with a budget
        ray.get(actor.set_budget.remote(limit_usd, spent_usd))
        return ClusterBudget(actor, limit_usd, price)

    def stages(self, engine: Engine, local: Stages) -> Stages:
        if not self.workers:
            self.start_workers()
        return RemoteStages(engine, local, self)

    def backends(self) -> Backends:
        return Backends(
            key_pool=self.key_pool, budget=self.budget, stages=self.stages, close=self.stop
        )


class RemoteStages(Stages):
    """The engine's stages, processing each group of records on the workers."""

    def __init__(self, engine: Engine, local: Stages, cluster: Cluster) -> None:
        super().__init__(
            local.recipe, local.provider, local.posts, local.template, local.rows, local.caller
        )
        self.engine = engine
        self.cluster = cluster
        self.group_size = max(2, cluster.recipe.run.concurrency)
        self._warned: set[str] = set()

    async def process(
        self, work: Work, extra: Mapping[str, Any] | None = None, sample: int = 0
    ) -> Row:
        # extra and sample are a steps: recipe's, which runs on the local engine only.
        rows = await self.process_group([work])
        if not rows:
            raise NotSent
        return rows[0]

    async def process_group(self, batch: list[Work]) -> list[Row]:
        parts: dict[int, list[Item]] = {}
        for position, work in enumerate(batch):
            # A steps: record goes with the steps it has finished (the run's journal).
            finished = self.engine.journal.pending.get(work.id, {})
            item: Item = (position, work.id, work.data, work.where, work.error, finished)
            parts.setdefault(shard_of(work.id, self.cluster.size), []).append(item)
        got: dict[int, Row] = {}
        async with anyio.create_task_group() as group:
            for shard, items in parts.items():
                group.start_soon(self._run_part, shard, items, got)
        # Records with no row were not sent (the run is stopping): the next run does them.
        return [got[p] for p in sorted(got)]

    async def _run_part(self, shard: int, items: list[Item], got: dict[int, Row]) -> None:
        pending = {item[0]: item for item in items}
        deaths = 0
        while pending:
            worker = self.cluster.workers[shard]
            try:
                async for ref in worker.process.remote(list(pending.values())):
                    message = await ref
                    for rid, name, digest, result in message.get("steps", ()):
                        # Durable here before anything depends on it: a worker that dies
                        # next does not cost this step again.
                        self.engine.journal.add(rid, name, digest, result)
                    for position, row in message["rows"]:
                        if pending.pop(position, None) is not None:
                            got[position] = row
                            self.engine.journal.forget(row["id"])
                    self._news(message)
                    if "not_sent" in message:
                        self._ended(message)
                        return
                return
            except DIED as exc:
                deaths += 1
                self.cluster.restarts += 1
                if deaths > MAX_RESTARTS:
                    self.engine.abort(
                        RunAborted(f"worker {shard} died {deaths} times in a row: {exc}")
                    )
                    return
                self.engine.progress.log(
                    f"worker {shard} died; its replacement takes its {len(pending)} "
                    "unfinished record(s)"
                )
                await anyio.sleep(min(5.0, 0.2 * deaths))

    def _news(self, message: dict[str, Any]) -> None:
        stats = self.engine.stats
        for code, n in message.get("retries", {}).items():
            stats.retries += n
            stats.retries_by_code[code] += n
        for url, (ok, failed) in message.get("endpoints", {}).items():
            counts = stats.endpoints.setdefault(url, [0, 0])
            counts[0] += ok
            counts[1] += failed
        for warning in message.get("warnings", ()):
            if warning not in self._warned:
                self._warned.add(warning)
                self.engine.warn(warning)

    def _ended(self, message: dict[str, Any]) -> None:
        if message.get("aborted"):
            self.engine.abort(RunAborted(message["aborted"]))
        elif message.get("budget") and not self.engine.flags.budget:
            self.engine.flags.budget = True
            self.engine.progress.log(
                f"budget: {self.engine.budget_reason()}; finishing the calls in flight"
            )
            self.engine.stop_reading()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join (``address``: ``auto`` or host:port) or start a local Ray cluster; Ray's usage
    statistics are off (nothing leaves this machine on llmrun's account)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if not address:
        # A cluster of this machine alone: its processes bind and advertise 127.0.0.1 (else
        # Ray looks up the address other machines would reach this one at).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False if not address else None,
        log_to_driver=False,
        configure_logging=False,
    )


def ray_engine(
    recipe: Recipe,
    registry: Registry,
    progress: Progress,
    *,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    handle_signals: bool = True,
) -> tuple[Engine, Cluster]:
    """The driver's engine for ``recipe`` on the Ray cluster this process joined; ``workers``
    defaults to one per CPU the cluster offers."""
    size = workers or max(1, int(cluster_cpus()))
    cluster = Cluster(recipe, overrides, size)
    # Started before the run (the engine's clock and progress then measure the job, not Ray
    # starting processes); each loads the recipe itself.
    cluster.start_workers()
    # The engine's tasks each hold one group of records on its way through the workers.
    driver_run = dataclasses.replace(recipe.run, concurrency=GROUPS_PER_WORKER * size)
    engine = make_engine(
        dataclasses.replace(recipe, run=driver_run),
        registry,
        progress,
        limit=limit,
        fresh=fresh,
        retry_errors=retry_errors,
        handle_signals=handle_signals,
        backends=cluster.backends(),
    )
    return engine, cluster


async def run_on_ray(
    recipe: Recipe,
    registry: Registry,
    progress: Progress,
    **options: Any,
) -> RunSummary:
    """Run ``recipe`` on the cluster (``init_ray`` first) and return how it ended."""
    engine, _ = ray_engine(recipe, registry, progress, **options)
    return await engine.run()  # its Backends.close ends the workers
