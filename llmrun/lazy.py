"""Names a package exports but imports on first use (``llmrun`` and ``llmrun.engine_api``), so
importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: a name in ``where`` ("module" below llmrun, the
    same name there, or "module:name") is imported when first asked for, then kept in
    ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        found = where.get(name)
        if found is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = found.partition(":")
        value = getattr(importlib.import_module(f"llmrun.{module}"), attr or name)
        namespace[name] = value
        return value

    return __getattr__
