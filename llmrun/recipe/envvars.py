"""``${VAR}`` interpolation from the environment and a ``.env`` file beside the recipe.

Forms: ``${VAR}`` (an error when unset), ``${VAR:-default}`` (the default when unset or empty),
and ``$${`` for a literal ``${``. The process environment wins over ``.env``, so a CI secret
overrides a developer's file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_QUOTED = re.compile(r"""^(?:"((?:[^"\\]|\\.)*)"|'([^']*)')(?:\s+#.*)?$""")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``KEY=value`` lines, optional quotes and ``export``, # comments."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    # utf-8-sig: editors on Windows may start the file with a byte-order mark.
    for raw in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _DOTENV_LINE.match(raw)
        if not m:
            continue
        key, value = m.group(1), m.group(2)
        quoted = _QUOTED.match(value)  # a comment may follow the closing quote
        if quoted and quoted.group(1) is not None:
            value = quoted.group(1).replace("\\n", "\n").replace('\\"', '"')
        elif quoted:
            value = quoted.group(2)
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        values[key] = value
    return values


class Environment:
    """Where ``${VAR}`` values come from: the process environment over a ``.env`` file."""

    def __init__(self, dotenv: Mapping[str, str], environ: Mapping[str, str] | None = None) -> None:
        self._dotenv = dotenv
        self._environ = os.environ if environ is None else environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value is not None else self._dotenv.get(name)

    def interpolate(self, text: str) -> tuple[str, list[str], bool]:
        """Substitute variables; return the text, the names that were missing, and whether any
        variable was substituted."""
        missing: list[str] = []
        used = False

        def sub(m: re.Match[str]) -> str:
            nonlocal used
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            value = self.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    used = True
                    return default
                missing.append(name)
                return ""
            used = True
            return value

        return _VAR.sub(sub, text), missing, used


def variables_in(text: str) -> list[str]:
    """The names ``text`` reads with ``${VAR}`` (``$${`` is a literal, not a read)."""
    return [m.group(1) for m in _VAR.finditer(text) if m.group(1)]
