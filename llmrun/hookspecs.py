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

Observer hooks are called by the engine; they must be quick (``record_done`` runs once per
record, on the writer's path) and must not raise: an observer that raises is reported once and
then no longer called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

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

    A recipe picks one with ``output: {writer: NAME, path: ..., ...options}``.
    """


@hookspec
def run_started(run: Mapping[str, Any]) -> None:
    """Called once before the first record is sent.

    ``run`` holds ``recipe`` (name), ``recipe_hash``, ``output`` (path), ``provider``, ``model``,
    ``resumed`` (rows already in the output) and ``started_at`` (ISO 8601).
    """


@hookspec
def record_done(row: Mapping[str, Any]) -> None:
    """Called for each row right after it is written (the row as in the output; never a key)."""


@hookspec
def run_finished(summary: Mapping[str, Any]) -> None:
    """Called once at the end of a run, however it ended.

    ``summary`` holds ``status`` ("completed", "interrupted", "aborted", "budget"), the counts
    (``ok``, ``error``, ``skipped``), ``tokens``, ``elapsed_s`` and ``reason`` when aborted.
    """
