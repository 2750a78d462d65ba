"""What a direct run resumes from, and the resume checkpoints it leaves (job/checkpoint.py):
the finished ids of the output (from the last checkpoint and the rows written since), where
the reader may start, and the checkpoints saved as the run goes and when it completes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..components import Loader, Writer
from ..job import checkpoint
from ..job.stats import RunStats
from ..job.store import IdSet, index_writer
from ..recipe.model import Recipe
from ..recipe.selection import Selection


class Resume:
    """One run's resume state. ``open`` indexes the output; ``frontier`` (direct mode, set by
    ``track``) follows how far every record has its row; ``save_as_it_goes`` and ``save`` leave
    checkpoints. A checkpoint that cannot be saved costs the next run time, never a row."""

    def __init__(
        self,
        recipe: Recipe,
        loader: Loader,
        writer: Writer,
        selection: Selection,
        limit: int | None,
        state_dir: Path,
        stats: RunStats,
        warn: Callable[[str], None],
    ) -> None:
        self.recipe, self.loader, self.writer = recipe, loader, writer
        self.selection, self.limit, self.state_dir = selection, limit, state_dir
        self.stats, self.warn = stats, warn
        self.point: checkpoint.Checkpoint | None = None  # the one the run began from
        self.saver: checkpoint.Saver | None = None
        self.frontier: checkpoint.Frontier | None = None

    def usable(self) -> bool:
        return checkpoint.usable(self.recipe, self.loader, self.selection, self.limit)

    @property
    def start(self) -> tuple[int, int] | None:
        """Where the reader starts (byte offset, lines before it): the checkpoint's end."""
        point = self.point
        return None if point is None else (point.input.size, point.lines)

    @property
    def selected_before(self) -> int:
        """Records the selection took before ``start``: all done."""
        return 0 if self.point is None else self.point.selected

    def open(self) -> IdSet:
        """Count what the output already holds and index the finished ids: from the resume
        checkpoint and the rows written since, when it still holds (a worker thread)."""
        usable = self.usable()
        recipe, stats = self.recipe, self.stats
        scope = checkpoint.scope(recipe, self.selection)
        point = None
        data: Path | None = None  # the input file: a loader a checkpoint is usable with has one
        if usable:
            data = self.loader.path  # type: ignore[attr-defined]
            point = checkpoint.read_checkpoint(self.state_dir, scope, data, recipe.output_path)
        # Files of ids no checkpoint names: left by a run killed before it named them.
        checkpoint.prune(self.state_dir, checkpoint.named(self.state_dir))
        spill = checkpoint.IndexSpill(self.state_dir)
        if point is None:
            done = index_writer(self.writer, stats, spill=spill)
        else:
            stats.resumed_ok, stats.resumed_error = point.ok, point.error
            stats.resumed_cost_usd = point.cost_usd
            done = index_writer(
                self.writer, stats, start=point.output.size, layers=point.layers, spill=spill
            )
        # The ids no file holds: the last rows indexed (every row, for a small output).
        before = len(point.layers) if point is not None else 0
        pending = done.layers()[before + len(spill.files) :]
        self.point = point
        if data is not None:  # (another writer's output may be a folder, or not exist yet)
            self.saver = checkpoint.Saver(
                self.state_dir,
                scope,
                data,
                recipe.output_path,
                self.writer.read_ids,  # type: ignore[attr-defined]
                point,
                [*(point.files if point is not None else []), *spill.files],
                pending,
                recipe.output_path.stat().st_size,
                stats.resumed_ok,
                stats.resumed_error,
                stats.resumed_cost_usd,
            )
        elif spill.files:  # mapped already, and no checkpoint will name them: not kept
            checkpoint.prune(self.state_dir, checkpoint.named(self.state_dir))
        return done

    def track(self) -> checkpoint.Frontier | None:
        """Direct mode: follow the reader and the writer (a loader that tells where it read)."""
        if self.saver is not None and hasattr(self.loader, "read_at"):
            self.frontier = checkpoint.Frontier()
        return self.frontier

    def save(self, read_all: int | None) -> None:
        """After a completed run that read every line of its input (``read_all`` records
        selected): what the next run need not read again."""
        read_to = getattr(self.loader, "read_to", None)
        if self.saver is None or read_to is None or read_all is None:
            return  # (a saver exists only for a run a checkpoint is usable with)
        try:
            size = self.recipe.output_path.stat().st_size
            self.saver.save(read_to, read_all, size)
        except (OSError, ValueError) as exc:  # ValueError: the output changed under the run
            self.warn(f"could not save the resume checkpoint: {exc}")

    async def save_as_it_goes(self) -> None:
        """While a direct run goes on: a checkpoint every ``checkpoint.every_s()`` up to where
        every record has its row (``Frontier``), so a killed run resumes without reading the
        whole output again. Saved in a thread: the workers go on meanwhile."""
        saver, frontier, every = self.saver, self.frontier, checkpoint.every_s()
        if saver is None or frontier is None or every <= 0:
            return
        saved: Any = None
        while True:
            await anyio.sleep(every)
            reached = frontier.reached
            if reached is None or reached == saved:
                continue
            try:
                size = self.recipe.output_path.stat().st_size  # every row before it written
                await anyio.to_thread.run_sync(saver.save, reached[0], reached[1], size)
            except (OSError, ValueError) as exc:
                self.warn(f"could not save the resume checkpoint: {exc}")
                return
            saved = reached
