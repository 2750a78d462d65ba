"""The console llmrun prints through: every string handed to it loses its control characters
first, so a server's or a record's text cannot move the cursor, clear the screen or retitle the
terminal (``ESC[2J``). Rich's own styling is added after, so colours still work."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from .redaction import printable


class SafeConsole(Console):
    """A rich Console that strips control characters from the strings and Text it prints."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(_clean(o) for o in objects), **kwargs)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Text):
        plain = value.plain
        cleaned = printable(plain)
        if cleaned != plain:
            return Text(cleaned, style=value.style)
    return value
