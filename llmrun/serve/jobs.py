"""Jobs: a batch of records (or a data file in the recipe's folder) run by the engine in the
background, into an output of their own.

A job is accepted once its folder holds ``job.json`` (and its records): both are on disk before
the id is answered. Each job is an ordinary engine run over a job-specific copy of the recipe
(its data, its output) on the served recipe's shared transport, keys and budget, so a job
interrupted in any way (a restart, a kill) is resumed by the next server exactly as ``llmrun
run`` resumes: every record ends in the job's output once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from ..job.store import now_iso
from ..recipe.load import COMPRESSED_SUFFIXES, LOADER_BY_SUFFIX
from ..recipe.model import ComponentSpec, Recipe
from ..run.engine import Engine
from ..run.progress import make_progress
from .gateway import BadRequest
from .service import Service

log = logging.getLogger("llmrun.serve")

_ID = re.compile(r"[0-9a-f]{32}")
FINAL = ("completed", "aborted")  # not resumed by a restarted server
FOLLOW_S = 0.2  # how often a followed output is read again
READ_SIZE = 1 << 16


class NoJob(Exception):
    pass


class Jobs:
    def __init__(self, folder: Path, service: Service) -> None:
        self.folder = folder
        self.service = service
        self._queue: deque[str] = deque()
        self._wake = anyio.Event()
        self._current: tuple[str, Engine] | None = None
        self._stopping = False
        self.finished = anyio.Event()  # the runner has returned

    # -- accepting ---------------------------------------------------------------------------

    def accept_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        data = folder / "records.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return self._accept(job_id, "jsonl", data, len(records))

    def accept_file(self, given: str) -> dict[str, Any]:
        base = self.service.recipe.base_dir.resolve()
        refused = BadRequest(f"path: {given!r} is not a file inside the recipe's folder")
        try:
            path = (base / given).resolve()
            # A client names a file; the recipe's folder is all it may reach (as a recipe does).
            if not path.is_relative_to(base) or not path.is_file():
                raise refused
        except (OSError, ValueError):  # a NUL byte, a name too long, a loop of links
            raise refused from None
        name = path.name.lower()
        for suffix in COMPRESSED_SUFFIXES:
            name = name.removesuffix(suffix)
        loader = LOADER_BY_SUFFIX.get(Path(name).suffix)
        if loader is None:
            kinds = ", ".join(LOADER_BY_SUFFIX)
            raise BadRequest(f"path: {given!r} is not a data file ({kinds})")
        job_id = uuid.uuid4().hex
        (self.folder / job_id).mkdir(parents=True)
        return self._accept(job_id, loader, path, None)

    def _accept(self, job_id: str, loader: str, data: Path, total: int | None) -> dict[str, Any]:
        job = {
            "id": job_id,
            "created_at": now_iso(),
            "loader": loader,
            "data": str(data),
            "status": "queued",
            "total": total,
            "done": 0,
            "ok": 0,
            "error": 0,
            "cost_usd": 0.0,
            "reason": None,
        }
        self._save(job)
        self._queue.append(job_id)
        self._wake.set()
        return self._public(job)

    # -- reading -----------------------------------------------------------------------------

    def _folder(self, job_id: str) -> Path:
        if not _ID.fullmatch(job_id):  # the id becomes a path: only our own form of id
            raise NoJob(job_id)
        return self.folder / job_id

    def _load(self, job_id: str) -> dict[str, Any]:
        try:
            job = json.loads((self._folder(job_id) / "job.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise NoJob(job_id) from None
        if not isinstance(job, dict):
            raise NoJob(job_id)
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        job = self._load(job_id)
        if self._current is not None and self._current[0] == job_id:
            stats = self._current[1].stats
            job.update(
                status="running",
                total=stats.total if stats.total is not None else job["total"],
                done=stats.done,
                ok=stats.ok + stats.resumed_ok,
                error=stats.error + stats.resumed_error,
                cost_usd=round(stats.cost_usd + stats.resumed_cost_usd, 8),
            )
        return self._public(job)

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        keys = ("id", "status", "created_at", "total", "done", "ok", "error", "cost_usd", "reason")
        return {k: job.get(k) for k in keys}

    async def rows(self, job_id: str) -> AsyncIterator[bytes]:
        """The output's complete lines, followed while the job is queued or running here (until
        the server stops); lines a resumed run writes later come with the next request."""
        self._load(job_id)  # NoJob before the answer starts
        path = self._folder(job_id) / "out.jsonl"
        offset = 0
        partial = b""
        while True:
            ended = not self._active(job_id)
            chunk = await anyio.to_thread.run_sync(_read, path, offset)
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if lines:
                yield b"".join(line + b"\n" for line in lines if line.strip())
            if chunk:
                continue  # more may be there already
            if ended:
                return
            await anyio.sleep(FOLLOW_S)

    def _active(self, job_id: str) -> bool:
        """Queued or running in this server (a job stopped at the budget is neither: the next
        server resumes it)."""
        if self._stopping:
            return False
        running = self._current is not None and self._current[0] == job_id
        return running or job_id in self._queue

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run accepted jobs one after another, first those a previous server left."""
        try:
            for job in sorted(self._on_disk(), key=lambda j: str(j.get("created_at"))):
                if job.get("status") not in FINAL and job["id"] not in self._queue:
                    log.info("resuming job %s", job["id"])
                    self._queue.appendleft(job["id"])
            while not self._stopping:
                if not self._queue:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                await self._run_one(self._queue.popleft())
        finally:
            self.finished.set()

    def _on_disk(self) -> list[dict[str, Any]]:
        jobs = []
        for folder in self.folder.glob("*/job.json") if self.folder.is_dir() else ():
            try:
                jobs.append(self._load(folder.parent.name))
            except NoJob:
                continue  # a job whose acceptance never completed: it was never answered
        return jobs

    async def _run_one(self, job_id: str) -> None:
        job = self._load(job_id)
        folder = self._folder(job_id)
        recipe = self._recipe(job, folder)
        service = self.service
        try:
            engine = Engine(
                recipe,
                service.registry,
                make_progress("none"),
                handle_signals=False,
                shared=service.shared,
            )
        except Exception as exc:
            job.update(
                status="aborted", reason=service.redact.message(f"{type(exc).__name__}: {exc}")
            )
            self._save(job)
            return
        self._current = (job_id, engine)
        try:
            summary = await engine.run()
        except Exception as exc:  # a plugin's bug, a locked output: the job, not the server
            job.update(
                status="aborted", reason=service.redact.message(f"{type(exc).__name__}: {exc}")
            )
            self._save(job)
            return
        finally:
            self._current = None
        for warning in summary.warnings:  # already redacted by the engine
            log.warning("job %s: %s", job_id, warning)
        stats = summary.stats
        service.metrics.run(stats)
        job.update(
            total=stats.total,
            done=stats.done,
            ok=stats.ok + stats.resumed_ok,
            error=stats.error + stats.resumed_error,
            cost_usd=round(stats.cost_usd + stats.resumed_cost_usd, 8),
            reason=summary.reason,
        )
        if summary.status != "interrupted":  # interrupted: resumed by the next server
            job["status"] = summary.status
        self._save(job)
        log.info("job %s: %s", job_id, summary.status)

    def _recipe(self, job: dict[str, Any], folder: Path) -> Recipe:
        recipe = self.service.recipe
        out = folder / "out.jsonl"
        return dataclasses.replace(
            recipe,
            data=ComponentSpec(str(job["loader"]), {"path": str(job["data"])}, "data"),
            output_path=out,
            # JSON lines whatever the recipe writes: GET .../rows streams them.
            writer=ComponentSpec("jsonl", {"path": str(out)}, "output"),
            run=dataclasses.replace(recipe.run, mode="direct"),
            # The client chose the records: the recipe's selection is for its own data.
            limit=None,
            offset=0,
            sample=None,
            filter=None,
            shard=None,
        )

    def stop(self) -> None:
        """Start no more jobs; the running one finishes its calls in flight and stops."""
        self._stopping = True
        self._wake.set()
        if self._current is not None:
            self._current[1].stop()

    def _save(self, job: dict[str, Any]) -> None:
        path = self._folder(str(job["id"])) / "job.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(job, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _read(path: Path, offset: int) -> bytes:
    """What the file holds past ``offset`` (nothing when it does not exist yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(READ_SIZE)
    except FileNotFoundError:
        return b""
