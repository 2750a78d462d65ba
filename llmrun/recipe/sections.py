"""A recipe's component sections as ``ComponentSpec``s: each checked against its component's
own option schema (a loader, a provider, a writer, each postprocessor of a chain, a step's),
and what code a component would run for the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import PluginError, Problem
from ..plugins import Registry
from .model import ComponentSpec, freeze
from .problems import locate, schema_problems
from .yamlsource import Positions, dotted


def code_of(registry: Registry, spec: ComponentSpec) -> str | None:
    """What code the component named by ``spec`` would run, when it runs code the recipe
    names (a component declares ``runs_code(options) -> str | None``)."""
    kind = {"postprocess": "postprocessor", "data": "loader", "provider": "provider"}
    name = kind.get(spec.where.split("[")[0].split(".")[0], "postprocessor")
    cls = registry.get(name, spec.name).cls
    runs_code = getattr(cls, "runs_code", None)
    what = runs_code(spec.options) if callable(runs_code) else None
    return f"{spec.where}: {what}" if what else None


def component_spec(
    registry: Registry,
    kind: str,
    name: Any,
    section: Mapping[str, Any],
    path: tuple[Any, ...],
    core_keys: tuple[str, ...],
    name_key: str | None,
    positions: Positions,
    filename: str,
    problems: list[Problem],
    *,
    name_path: tuple[Any, ...] | None = None,
) -> ComponentSpec | None:
    where = (*path, name_key) if name_key else (name_path or path)
    try:
        info = registry.get(kind, str(name))
    except PluginError as exc:
        file, line, col = locate(where, positions, filename)
        problems.append(Problem(str(exc), dotted(where), file, line, col))
        return None
    options = {k: v for k, v in section.items() if k not in core_keys}
    schema = getattr(info.cls, "options_schema", None) or {"type": "object"}
    found = schema_problems(options, schema, path, positions, filename, core_keys)
    problems.extend(found)
    return None if found else ComponentSpec(str(name), freeze(options), dotted(path))


def engine_runs_steps(registry: Registry, engine: Any, mode: Any) -> bool:
    """Whether a plugin's engine runs steps: recipes (its class says ``runs_steps = True``); in
    batch mode the local engine submits the batches, so only it runs steps there."""
    try:
        cls = registry.get("engine", str(engine)).cls
    except PluginError:
        return True  # reported as an unknown engine
    return bool(getattr(cls, "runs_steps", False)) and mode != "batch"


def postprocessors(
    registry: Registry,
    post_items: Any,
    at: tuple[Any, ...],
    positions: Positions,
    filename: str,
    problems: list[Problem],
) -> list[ComponentSpec]:
    """The postprocessors of a ``postprocess:`` list at ``at`` (the recipe's or a step's)."""
    posts: list[ComponentSpec] = []
    for i, item in enumerate(post_items if isinstance(post_items, list) else []):
        opts: Any
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
        else:
            continue  # reported by the base schema
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            file, line, col = locate((*at, i, name), positions, filename)
            problems.append(
                Problem(
                    "options must be a mapping",
                    dotted((*at, i, name)),
                    file,
                    line,
                    col,
                )
            )
            continue
        spec = component_spec(
            registry,
            "postprocessor",
            name,
            opts,
            (*at, i, name),
            (),
            None,
            positions,
            filename,
            problems,
            name_path=(*at, i),
        )
        if spec:
            posts.append(spec)
    return posts
