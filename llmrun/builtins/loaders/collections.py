"""Loaders of many files (``files``: one record per file) and of records written in the recipe
(``inline``)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from llmrun import ComponentContext, OutsideError, SourceRecord

from .sources import ENCODING_SCHEMA

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})


class FilesLoader:
    """One record per file of a folder or glob, in sorted path order.

    Each record has ``path`` (relative to the recipe's folder when inside it, else absolute),
    ``name`` (the file name), and either ``text`` (the file's content) or ``image`` (the path
    again, for the prompt's ``images:`` to attach). ``read: auto`` reads image files (by
    extension) as images and everything else as text. A file that cannot be read becomes an
    error row. Only the list of paths is held in memory, never the contents of more than one.
    """

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {
                "type": "string",
                "description": "A folder or a glob (`images/*.png`, `docs/**/*.md`), relative "
                "to the recipe.",
            },
            "pattern": {
                "type": "string",
                "default": "*",
                "description": "With a folder: the glob of files to take in it.",
            },
            "recursive": {
                "type": "boolean",
                "default": False,
                "description": "With a folder: look in its subfolders too.",
            },
            "read": {"enum": ["auto", "text", "image"], "default": "auto"},
            "encoding": ENCODING_SCHEMA,
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.base_dir = context.base_dir.resolve()
        self.context = context
        given = str(options["path"])
        root = (self.base_dir / given).resolve()
        if root.is_dir():
            sub = "**" if options.get("recursive", False) else ""
            self.pattern = str(root / sub / str(options.get("pattern", "*")))
        else:
            self.pattern = str(self.base_dir / given)
        self.read = str(options.get("read", "auto"))
        self.encoding = str(options.get("encoding", "utf-8"))

    def _paths(self) -> list[Path]:
        found = glob.glob(self.pattern, recursive=True)
        return sorted(Path(p) for p in found if os.path.isfile(p))

    def _shown(self, path: Path) -> str:
        try:
            return path.relative_to(self.base_dir).as_posix()
        except ValueError:
            return str(path)

    def records(self) -> Iterator[SourceRecord]:
        for path in self._paths():
            shown = self._shown(path)
            try:  # a link in the folder may point anywhere: it is read only if allowed
                self.context.readable(path, "data.path")
            except OutsideError as exc:
                yield SourceRecord(None, shown, f"{shown}: {exc}")
                continue
            data: dict[str, Any] = {"path": shown, "name": path.name}
            as_image = self.read == "image" or (
                self.read == "auto" and path.suffix.lower() in IMAGE_SUFFIXES
            )
            if as_image:
                data["image"] = shown
            else:
                try:
                    data["text"] = path.read_text(encoding=self.encoding)
                except (OSError, UnicodeDecodeError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) else exc.reason
                    yield SourceRecord(None, shown, f"{shown}: cannot read as text ({reason})")
                    continue
            yield SourceRecord(data, shown)

    def count(self) -> int | None:
        return len(self._paths())


class InlineLoader:
    """Records written in the recipe itself: ``records: [{...}, ...]``."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["records"],
        "properties": {
            "records": {"type": "array", "items": {"type": "object"}},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.items = list(options["records"])

    def records(self) -> Iterator[SourceRecord]:
        for i, item in enumerate(self.items):
            yield SourceRecord(_plain(item), f"data.records[{i}]")

    def count(self) -> int | None:
        return len(self.items)


def _plain(value: Any) -> Any:
    """A recipe's frozen values as plain dicts and lists (templates and JSON want those)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
