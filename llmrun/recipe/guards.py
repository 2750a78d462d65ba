"""What a recipe may reach, checked when it is loaded, so every command (validate, plan, run,
batch, status, repost...) refuses the same things with the same file:line messages.

- Reads: ``data.path`` and ``prompt.examples.path`` resolve (symlinks included) inside the
  recipe's folder or a folder the user allowed (``llmrun.access``).
- Writes: ``output.path`` is not an existing file that llmrun did not write, not an input, and
  inside the recipe's folder unless the user named it on the command line.
- Code: components that run code the recipe names (``runs_code``) are listed, so validate and
  plan can say what would run; they are built only with the user's trust.
- Keys: where each key goes (the endpoint's host, the key's fingerprint) and the refusal to send
  a key that belongs to a known service anywhere else unless the user confirms the host.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..access import KNOWN_KEY_HOMES, Access, OutsideError, ReadScope
from ..errors import Problem
from ..redaction import fingerprint
from .yamlsource import Positions, dotted

FROM_COMMAND_LINE = (0, 0)  # the position --set gives a key (yamlsource/load)


@dataclass(frozen=True)
class KeyRoute:
    """One key and where it is sent: shown by plan and at the start of every run."""

    host: str
    fingerprint: str
    source: str  # "$OPENAI_API_KEY", "the recipe", "--set"

    def __str__(self) -> str:
        if not self.fingerprint:
            return f"{self.host} (no key)"
        return f"{self.host} <- {self.fingerprint} (from {self.source})"


def _locate(path: tuple[Any, ...], positions: Positions, filename: str) -> Problem:
    line, col = positions.get(path, (None, None))
    if (line, col) == FROM_COMMAND_LINE:
        return Problem("", dotted(path), "--set")
    return Problem("", dotted(path), filename, line, col)


def _problem(path: tuple[Any, ...], message: str, positions: Positions, filename: str) -> Problem:
    where = _locate(path, positions, filename)
    return Problem(message, where.path, where.file, where.line, where.column)


def from_command_line(path: tuple[Any, ...], positions: Positions) -> bool:
    return positions.get(path) == FROM_COMMAND_LINE


def read_problems(
    data: Mapping[str, Any], scope: ReadScope, positions: Positions, filename: str
) -> list[Problem]:
    """``data.path`` and ``prompt.examples.path`` outside the folders the recipe may read (a
    data path the user gave with ``--set`` is the user's choice, not the recipe's)."""
    problems: list[Problem] = []
    for path in _input_keys(data):
        value = _get(data, path)
        if not isinstance(value, str) or value == "-" or "://" in value:
            continue
        if from_command_line(path, positions):
            continue
        try:
            scope.check(glob_root(value), "")  # the problem names the key
        except OutsideError as exc:
            problems.append(_problem(path, str(exc), positions, filename))
    return problems


def _input_keys(data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    return [("data", "path"), ("prompt", "examples", "path")]


def _get(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def glob_root(value: str) -> str:
    """The folder part of a glob before its first wildcard (``docs/**/*.md`` -> ``docs``)."""
    parts = Path(value).parts
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return str(Path(*parts[:i])) if i else "."
    return value


def input_paths(data: Mapping[str, Any], base_dir: Path, recipe: Path) -> list[Path]:
    """Files and folders the run reads: the recipe itself, the data, the few-shot examples."""
    found = [recipe]
    for path in _input_keys(data):
        value = _get(data, path)
        if isinstance(value, str) and value != "-" and "://" not in value:
            found.append((base_dir / glob_root(value)).resolve())
    return found


def cache_problems(
    cache: Path, output: Path | None, recipe: Path, positions: Positions, filename: str
) -> list[Problem]:
    """Where the call cache would be written, refused when it is not the recipe's to write:
    outside its folder (``llmrun run --cache PATH`` names any), or the output itself."""
    where = ("cache",)
    base = recipe.parent.resolve()
    problems: list[Problem] = []
    if from_command_line(where, positions) or from_command_line((*where, "path"), positions):
        return problems
    if cache != base and base not in cache.parents:
        problems.append(
            _problem(
                where,
                f"{cache} is outside the recipe's folder {base}; a recipe writes only inside its "
                "folder unless you name the cache on the command line (--cache PATH)",
                positions,
                filename,
            )
        )
    if output is not None and (cache == output or output in cache.parents):
        problems.append(
            _problem(
                where,
                f"{cache} is the run's output: the cache needs a file of its own",
                positions,
                filename,
            )
        )
    return problems


def output_problems(
    data: Mapping[str, Any],
    output: Path,
    recipe: Path,
    positions: Positions,
    filename: str,
) -> list[Problem]:
    """Where the run would write, refused when it is not the recipe's to write."""
    where = ("output", "path")
    base = recipe.parent.resolve()
    problems: list[Problem] = []
    given = from_command_line(where, positions)
    if not given and output != base and base not in output.parents:
        problems.append(
            _problem(
                where,
                f"{output} is outside the recipe's folder {base}; a recipe writes only "
                "inside its folder unless you name the output on the command line "
                "(--output PATH, or --set output.path=PATH)",
                positions,
                filename,
            )
        )
    for source in input_paths(data, base, recipe):
        if output == source or source in output.parents:
            what = "is" if output == source else "is inside"
            problems.append(
                _problem(
                    where,
                    f"{output} {what} an input of the run ({source}); the output must be a "
                    "file of its own",
                    positions,
                    filename,
                )
            )
    reason = foreign_output(output)
    if reason:
        problems.append(
            _problem(
                where,
                f"{output} exists and is not an llmrun output ({reason}); llmrun will not "
                "append to it: choose another output.path, or move the file away",
                positions,
                filename,
            )
        )
    return problems


def foreign_output(output: Path) -> str | None:
    """Why an existing file at ``output`` is not one llmrun wrote (None when it is, or when
    nothing is there): an llmrun output has its state folder beside it, or starts with a row."""
    if not output.exists():
        return None
    if output.with_name(output.name + ".llmrun").is_dir():
        return None  # a writer may keep its output as a folder of parts (parquet)
    if output.is_dir():
        return "it is a folder"
    try:
        with open(output, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not head.strip():
        return None  # empty: nothing to lose
    first = head.split(b"\n", 1)[0]
    try:
        row = json.loads(first)
    except ValueError:
        row = None
    if isinstance(row, dict) and "id" in row and row.get("status") in ("ok", "error"):
        return None
    return f"no state folder {output.name}.llmrun/ beside it, and its first line is not a row"


def key_homes(homes: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Each key variable llmrun knows (its table, then the provider's ``key_homes``) -> the
    hosts its key belongs to."""
    return {**KNOWN_KEY_HOMES, **homes}


def key_routes(
    endpoint: str,
    keys: Mapping[str, str],
    homes: Mapping[str, tuple[str, ...]],
    access: Access,
    base_url_given: bool,
    where: Problem,
) -> tuple[tuple[KeyRoute, ...], list[Problem]]:
    """Where each key goes, and a problem for every key that belongs to a known service but
    would go to another host the user has not confirmed. ``keys`` maps each key to where it
    came from (``$VAR`` or "the recipe"); ``homes`` maps variables to the hosts they belong
    to (llmrun's table and the provider's own)."""
    host = host_of(endpoint)
    routes: list[KeyRoute] = []
    problems: list[Problem] = []
    table = key_homes(homes)
    if not keys and host:
        routes.append(KeyRoute(host, "", ""))
    for key, source in keys.items():
        routes.append(KeyRoute(host or "(the provider's endpoint)", fingerprint(key), source))
        variable = source.removeprefix("$")
        allowed = table.get(variable) if source.startswith("$") else None
        if not allowed or not host or _host_allowed(host, endpoint, allowed):
            continue
        if base_url_given or _host_allowed(host, endpoint, tuple(access.hosts)):
            continue
        name = (urlsplit(endpoint).hostname or host).lower()
        problems.append(
            Problem(
                f"the key in {source} belongs to {', '.join(allowed)}, but this recipe sends it "
                f"to {host}; if that host is yours, confirm it with --allow-host {name} (or "
                f"add it to LLMRUN_ALLOW_HOSTS)",
                where.path,
                where.file,
                where.line,
                where.column,
            )
        )
    return tuple(routes), problems


def host_of(url: str) -> str:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return ""


def _host_allowed(host: str, url: str, patterns: tuple[str, ...]) -> bool:
    name = (urlsplit(url).hostname or "").lower()
    return any(fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(name, p) for p in patterns)
