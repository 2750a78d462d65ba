"""The engine plugin API: what a distribution that runs a recipe's calls somewhere else than
this process needs beyond ``llmrun`` itself (``plugins/llmrun-ray`` is the example).

A loader, provider, postprocessor, writer or observer needs only ``llmrun`` (and
``llmrun.hookspecs``). An engine (``register_engines``, the ``llmrun.RunEngine`` protocol) goes
further in: it drives llmrun's own engine with its pieces replaced (``make_engine(backends=...)``,
see ``Backends``), so it builds, subclasses or calls the pieces named here. They are public: a
plugin imports them from this module only, never from the module that defines them, which may
move. The engine's own attributes an engine plugin reads (``Engine.provider``, ``.rows``,
``.journal``, ``.stats``, ``.progress``, ``abort()``, ``warn()``, ``stop_reading()``, ...) are
those without a leading underscore.

Names are imported on first use, as ``llmrun``'s are: a module that takes ``KeyPool`` from here
(a limiter process) loads the key pool, not the whole engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_getattr

# Public name -> "module" (the same name there) or "module:name", as in llmrun/__init__.py.
_WHERE = {
    "Backends": "run.backends",
    "Budget": "run.budget",
    "Caller": "run.calls",
    "Engine": "run.engine",
    "KeyPool": "run.limits",
    "Lease": "run.keystate",
    "NotSent": "run.calls",
    "Price": "recipe.pricing",
    "Progress": "run.progress",
    "Registry": "plugins",
    "Stages": "run.stages",
    "StepJournal": "job.stepjournal",
    "StepStages": "run.steps",
    "Work": "job.records",
    "add_run_command": "commands.run:register",
    "default_transport": "wire.transport",
    "endpoint_name": "redaction",
    "fingerprint": "redaction",
    "id_hash": "recipe.selection",
    "make_engine": "api",
    "make_progress": "run.progress",
    "record_id": "job.ids",
    "report_error": "commands.main",
}

__all__ = [
    "Backends",
    "Budget",
    "Caller",
    "Engine",
    "KeyPool",
    "Lease",
    "NotSent",
    "Price",
    "Progress",
    "Registry",
    "Stages",
    "StepJournal",
    "StepStages",
    "Work",
    "add_run_command",
    "default_transport",
    "endpoint_name",
    "fingerprint",
    "id_hash",
    "make_engine",
    "make_progress",
    "record_id",
    "report_error",
]


__getattr__ = lazy_getattr("llmrun.engine_api", _WHERE, globals())


if TYPE_CHECKING:
    from .api import make_engine
    from .commands.main import report_error
    from .commands.run import register as add_run_command
    from .job.ids import record_id
    from .job.records import Work
    from .job.stepjournal import StepJournal
    from .plugins import Registry
    from .recipe.pricing import Price
    from .recipe.selection import id_hash
    from .redaction import endpoint_name, fingerprint
    from .run.backends import Backends
    from .run.budget import Budget
    from .run.calls import Caller, NotSent
    from .run.engine import Engine
    from .run.keystate import Lease
    from .run.limits import KeyPool
    from .run.progress import Progress, make_progress
    from .run.stages import Stages
    from .run.steps import StepStages
    from .wire.transport import default_transport
