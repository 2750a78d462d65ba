"""The pluggy hook specifications: the whole plugin contract.

A plugin is a module (or object) with functions marked ``@llmrun.hookimpl``, exposed by an entry
point in group ``llmrun``. Built-in components are registered through these same hooks.

Registration hooks receive a ``register`` callable::

    @llmrun.hookimpl
    def register_providers(register):
        register("myprovider", MyProvider)

``register(name, cls)`` takes a component name (what recipes write) and a class implementing the
matching protocol in ``llmrun.components``. Names are unique across all plugins; a duplicate is
reported and the later one ignored.

Observer hooks receive typed values (``llmrun.values``) and are called through pluggy, so
``tryfirst``, ``trylast`` and wrappers work as in any pluggy host. They must be quick
(``record_done`` runs once per record, on the writer's path) and should not raise: an observer
that raises is reported once and then no longer called in that run; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .values import Row, RunEnd, RunStart

# The plugin contract's version: the hooks here and the protocols in ``components.py``. It grows
# by one when a change would break an existing plugin; a plugin states what it needs with a
# module-level ``LLMRUN_API = ">=1"`` (see ``plugins.api_problem``).
PLUGIN_API = "1"

hookspec = pluggy.HookspecMarker("llmrun")
hookimpl = pluggy.HookimplMarker("llmrun")

Register = Callable[[str, type], None]


@hookspec
def register_loaders(register: Register) -> None:
    """Register loader classes (``llmrun.components.Loader``) by name.

    A recipe picks one with ``data: {loader: NAME, ...options}``.
    """


@hookspec
def register_providers(register: Register) -> None:
    """Register provider classes (``llmrun.components.Provider``) by name.

    A recipe picks one with ``provider: {name: NAME, ...options}``.
    """


@hookspec
def register_postprocessors(register: Register) -> None:
    """Register postprocessor classes (``llmrun.components.Postprocessor``) by name.

    A recipe chains them with ``postprocess: [NAME, {NAME: {...options}}]``.
    """


@hookspec
def register_writers(register: Register) -> None:
    """Register writer classes (``llmrun.components.Writer``) by name.

    A recipe picks one with ``output: {writer: NAME, path: ..., ...options}``. A writer may
    also read its output back (``read``: ``llmrun.ReadableWriter``, for ``status``, ``plan``
    and ``export``) and rewrite it in place (``rewrite``: ``llmrun.RewritableWriter``, for
    ``run --retry-errors`` and ``repost``).
    """


@hookspec
def register_engines(register: Register) -> None:
    """Register run engines (``llmrun.components.RunEngine``) by name: where a recipe's calls
    run when not in this process (``llmrun-ray`` registers ``ray``).

    A recipe picks one with ``run: {engine: NAME, workers: N}``; ``llmrun run --engine NAME
    --address ADDR`` picks one and the cluster it joins.
    """


@hookspec
def run_started(run: RunStart) -> None:
    """Called once before the first record is sent.

    ``run`` (``llmrun.values.RunStart``) has ``recipe`` (name), ``recipe_hash``, ``output``
    (path), ``provider``, ``model``, ``resumed`` (rows already in the output) and ``started_at``
    (ISO 8601), as attributes (and, for plugins written for the first version, as keys).
    """


@hookspec
def record_done(row: Row) -> None:
    """Called for each row right after it is written: ``row`` is the row as in the output
    (``llmrun.values.Row``, docs/output.md; never a key). Quick: it runs on the writer's path."""


@hookspec
def run_finished(summary: RunEnd) -> None:
    """Called once at the end of a run, however it ended.

    ``summary`` (``llmrun.values.RunEnd``) has ``status`` ("completed", "interrupted",
    "aborted", "budget"), ``reason``, the counts (``ok``, ``error``, ``resumed_ok``, ...),
    ``cost_usd``, ``tokens``, ``elapsed_s`` and ``warnings``: what ``llmrun run --json`` prints.
    """
