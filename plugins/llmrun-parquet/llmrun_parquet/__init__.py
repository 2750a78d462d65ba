"""llmrun-parquet: a ``parquet`` loader and a ``parquet`` writer for llmrun.

Registered through the ``llmrun`` entry point. pyarrow is imported only when a component is
built, so ``llmrun plugins`` and ``llmrun --help`` stay fast with this plugin installed.
"""

from __future__ import annotations

from llmrun import Register, hookimpl

from .loader import ParquetLoader
from .writer import ParquetWriter

__version__ = "0.1.0"
__all__ = ["ParquetLoader", "ParquetWriter", "__version__"]


@hookimpl
def register_loaders(register: Register) -> None:
    register("parquet", ParquetLoader)


@hookimpl
def register_writers(register: Register) -> None:
    register("parquet", ParquetWriter)
