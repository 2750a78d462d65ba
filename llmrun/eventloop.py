"""Which event loop a run gets, and the one sync entry point that starts it.

``auto`` (the default) runs on uvloop wherever it is installed (it is a dependency on every
platform but Windows), else on asyncio's own loop. On realistic rows uvloop takes 5% off
llmrun's CPU per request over HTTP and 15% over TLS, where asyncio's TLS layer is pure Python
and uvloop's is compiled (benchmarks/README.md, "Session 12"). ``asyncio`` and ``trio`` choose
those loops whatever is installed; ``uvloop`` requires it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, get_args

from .errors import LlmrunError

__all__ = ["LOOPS", "Loop", "run_sync", "uvloop_installed"]

Loop = Literal["auto", "asyncio", "uvloop", "trio"]
LOOPS: tuple[str, ...] = get_args(Loop)

T = TypeVar("T")


def uvloop_installed() -> bool:
    """Whether uvloop imports (found but broken, say built for another Python, counts as not
    installed: ``auto`` then runs on asyncio's loop rather than failing)."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def run_sync(fn: Callable[[], Awaitable[T]], loop: Loop = "auto") -> T:
    """Run ``fn`` to completion on a new event loop of the kind ``loop`` names."""
    import anyio

    if loop not in LOOPS:
        raise LlmrunError(f"unknown event loop {loop!r}: one of {', '.join(LOOPS)}")
    if loop == "trio":
        return anyio.run(fn, backend="trio")
    if loop == "uvloop" and not uvloop_installed():
        raise LlmrunError(
            "the uvloop event loop was asked for, but uvloop is not installed (or does not "
            "import); `--loop auto` runs on asyncio's loop without it"
        )
    options: dict[str, Any] = {}
    if loop == "uvloop" or (loop == "auto" and uvloop_installed()):
        options["use_uvloop"] = True
    return anyio.run(fn, backend="asyncio", backend_options=options)
