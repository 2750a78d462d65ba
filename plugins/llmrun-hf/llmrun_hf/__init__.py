"""llmrun-hf: an ``hf`` loader over Hugging Face ``datasets``.

Registered through the ``llmrun`` entry point. ``datasets`` is imported only when records are
read, so ``llmrun plugins`` and ``llmrun --help`` stay fast with this plugin installed.
"""

from __future__ import annotations

from llmrun import Register, hookimpl

from .loader import HfLoader

__version__ = "0.1.0"
__all__ = ["HfLoader", "__version__"]


@hookimpl
def register_loaders(register: Register) -> None:
    register("hf", HfLoader)
