"""Injection points for running a recipe's calls somewhere else than this process.

The engine normally paces keys with an in-process ``KeyPool``, counts ``run.budget_usd`` with an
in-process ``Budget`` and processes each record with in-process ``Stages``. A distribution that
spreads one job over many processes or machines (``plugins/llmrun-ray``) hands the engine
``Backends`` instead: a key pool and a budget whose state lives in one shared place (so a limit,
a retired key and the budget hold for the whole cluster), and stages that send records to remote
workers, and ``close`` ends them with the run. Every factory is optional; what is left out stays
the in-process default.

A replacement must keep the contracts of what it replaces (a subclass that overrides the
methods the ``Caller`` and the engine use): ``KeyPool`` (acquire, release, settle_tokens,
local_endpoint, on_success, on_rate_limited, retire, exhausted_message), ``Budget`` (reserve,
settle, worst_case, reason) and ``Stages`` (group_size, process, process_group, caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..recipe.model import Recipe
    from ..recipe.pricing import Price
    from .budget import Budget
    from .limits import KeyPool
    from .stages import Stages


@dataclass(frozen=True)
class Backends:
    """What the engine builds instead of its in-process defaults (None: the default)."""

    # The recipe -> the key pool the run's Caller paces and retires keys with.
    key_pool: Callable[[Recipe], KeyPool] | None = None
    # (run.budget_usd, the model's price, spend already in the output) -> the run's Budget.
    budget: Callable[[float, Price, float], Budget] | None = None
    # (the engine, its in-process stages) -> the stages its workers process records with. The
    # engine is ``run.engine.Engine``, which imports this module (so it is not named here).
    stages: Callable[[Any, Stages], Stages] | None = None
    # Called once when the run ends, however it ends: frees what the backends hold (the remote
    # workers), which would otherwise outlive the run in a process that goes on.
    close: Callable[[], None] | None = None
