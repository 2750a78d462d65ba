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

Unlike ``llmrun``, this module imports the whole run machinery when imported: import it where an
engine is built or a run starts, not at a plugin's module level (``llmrun plugins`` stays fast).
"""

from __future__ import annotations

from .api import make_engine
from .commands.main import report_error
from .commands.run import register as add_run_command
from .job.ids import record_id
from .job.records import Work
from .job.stepjournal import StepJournal
from .plugins import Registry
from .recipe.pricing import Price
from .recipe.selection import id_hash
from .redaction import fingerprint
from .run.backends import Backends
from .run.budget import Budget
from .run.calls import Caller, NotSent
from .run.engine import Engine
from .run.limits import KeyPool, Lease
from .run.progress import Progress, make_progress
from .run.stages import Stages
from .run.steps import StepStages
from .wire.transport import default_transport

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
    "fingerprint",
    "id_hash",
    "make_engine",
    "make_progress",
    "record_id",
    "report_error",
]
