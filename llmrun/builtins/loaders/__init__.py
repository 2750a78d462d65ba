"""Built-in loaders. All stream; none reads a whole file into memory.

- ``jsonl`` and ``text`` (lines.py), ``csv`` (tabular.py), ``json`` (jsonarray.py): one file,
  ``-`` for stdin, ``.gz``/``.zst`` decompressed as read (sources.py);
- ``files`` and ``inline`` (collections.py);
- ``openai-requests`` (requests_file.py): OpenAI chat request files, run as they are.
"""

from __future__ import annotations

from llmrun import Register, hookimpl

from .collections import FilesLoader, InlineLoader
from .jsonarray import JsonLoader
from .lines import JsonlLoader, TextLoader
from .requests_file import OpenAIRequestsLoader
from .sources import FileLoader, Source
from .tabular import CsvLoader

__all__ = [
    "CsvLoader",
    "FileLoader",
    "FilesLoader",
    "InlineLoader",
    "JsonLoader",
    "JsonlLoader",
    "OpenAIRequestsLoader",
    "Source",
    "TextLoader",
]


@hookimpl
def register_loaders(register: Register) -> None:
    register("jsonl", JsonlLoader)
    register("csv", CsvLoader)
    register("json", JsonLoader)
    register("text", TextLoader)
    register("files", FilesLoader)
    register("inline", InlineLoader)
    register("openai-requests", OpenAIRequestsLoader)
