"""``--set key.path=value``: the user's overrides of a recipe, applied to its parsed YAML before
anything else reads it (a set key is marked as coming from ``--set`` in the positions), and
what follows from them: a hint for a key set at the wrong level, and the folder of a
``data.path`` the user named."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..access import Access
from ..errors import Problem, RecipeError
from .guards import glob_root
from .schema import base_schema
from .yamlsource import Positions


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``run.concurrency=8`` -> (("run", "concurrency"), 8); the value is read as YAML."""
    key, sep, value = text.partition("=")
    keys = tuple(p.strip() for p in key.split("."))
    if not sep or not all(keys):
        raise RecipeError([Problem(f"--set expects key.path=value, got {text!r}", file="--set")])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def override_hints(overrides: Sequence[str]) -> dict[str, str]:
    """``--set concurrency=4`` names no top-level key: the hint says which section has a key of
    that name (``run.concurrency``), or the nearest top-level key. By the unknown key."""
    sections: Mapping[str, Any] = base_schema().get("properties", {})
    hints: dict[str, str] = {}
    for text in overrides:
        top = text.partition("=")[0].split(".")[0].strip()
        if not top or top in sections:
            continue
        within = [
            f"{name}.{top}"
            for name, sub in sections.items()
            if isinstance(sub, Mapping) and top in (sub.get("properties") or {})
        ]
        guess = within or difflib.get_close_matches(top, list(sections), n=1)
        if guess:
            rest = text[text.index(top) + len(top) :]
            hints[top] = f"; did you mean --set {' or '.join(g + rest for g in guess)}?"
    return hints


def apply_override(
    data: dict[str, Any], keys: tuple[str, ...], value: Any, positions: Positions
) -> None:
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key) if isinstance(node, dict) else None
        if not isinstance(nxt, dict):
            if nxt is not None:
                raise RecipeError(
                    [
                        Problem(
                            f"cannot set {'.'.join(keys)}: "
                            f"{'.'.join(keys[: i + 1])} is not a mapping",
                            file="--set",
                        )
                    ]
                )
            nxt = {}
            node[key] = nxt
            positions[keys[: i + 1]] = (0, 0)  # a section the override created
        node = nxt
    node[keys[-1]] = value
    for path in [p for p in positions if p[: len(keys)] == keys]:
        del positions[path]
    positions[keys] = (0, 0)  # marks "came from --set"; _locate reports it as such


def user_data_folder(
    data: dict[str, Any], positions: Positions, base: Path, access: Access
) -> Access:
    """A ``data.path`` the user gave with ``--set`` is theirs to name: its folder joins the
    folders the recipe may read (the files of a folder, images beside the data)."""
    section = data.get("data")
    given = section.get("path") if isinstance(section, dict) else None
    if not isinstance(given, str) or positions.get(("data", "path")) != (0, 0):
        return access
    if given == "-" or "://" in given or "$" in given:
        return access
    root = (base / glob_root(given)).resolve()
    folder = root if root.is_dir() else root.parent
    return replace(access, read_roots=(*access.read_roots, folder))
