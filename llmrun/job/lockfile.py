"""``recipe.lock``: what a recipe ran with, so a colleague's run can be checked against it.

``llmrun lock recipe.yaml`` writes ``recipe.lock`` beside the recipe (JSON, sorted keys, so it
diffs well in version control). It holds:

- ``llmrun``: the version, and the plugin API version;
- ``job_hash``: the recipe's hash of what decides results (data, prompt, provider without keys,
  generation, postprocessing; not run settings, so tuning concurrency is no drift);
- ``components``: each component the recipe uses with the package and version providing it;
- ``models``: the model names the provider asks for;
- ``files``: the sha256 of every file the recipe reads (data files, schemas: any component
  option naming an existing file beside the recipe, the output excepted) and of every template
  the prompt includes, imports or extends;
- ``installed_plugins``: every installed distribution with an ``llmrun`` entry point. For
  information only: plugins the recipe does not use cannot change its results, so they are not
  compared.

``llmrun run`` compares the current state with the lock: a difference is a warning, or with
``--locked`` a refusal (exit 2) listing every difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from ..__about__ import __version__
from ..errors import Problem, RecipeError
from ..hookspecs import PLUGIN_API
from ..plugins import ENTRY_POINT_GROUP, Registry
from ..recipe.model import Recipe, thaw
from ..recipe.templates import make_environment
from .store import atomic_write

LOCK_FORMAT = 1


class LockDrift(RecipeError):
    """The recipe's inputs differ from its lock (``run --locked``); one Problem per change."""


def lock_path(recipe_path: Path) -> Path:
    """``recipe.lock`` beside ``recipe.yaml`` (``other.lock`` for ``other.yaml``: two recipes
    in one folder keep separate locks)."""
    return recipe_path.with_suffix(".lock")


def build_lock(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    """The lock's content for the recipe as it is now."""
    components: dict[str, Any] = {}
    specs = [("loader", "data", recipe.data), ("provider", "provider", recipe.provider)]
    specs += [("writer", "output", recipe.writer)]
    specs += [
        ("postprocessor", f"postprocess[{i}]", spec) for i, spec in enumerate(recipe.postprocess)
    ]
    for kind, key, spec in specs:
        info = registry.get(kind, spec.name)
        components[key] = {
            "kind": kind,
            "name": spec.name,
            "package": info.package,
            "version": info.version,
        }
    model = recipe.provider.options.get("model")
    return {
        "format": LOCK_FORMAT,
        "llmrun": {"version": __version__, "plugin_api": PLUGIN_API},
        "recipe": recipe.path.name,
        "job_hash": recipe.job_hash,
        "components": components,
        "models": [] if model is None else [str(model)],
        "files": file_hashes(recipe),
        "installed_plugins": installed_plugins(),
    }


def write_lock(recipe: Recipe, registry: Registry) -> Path:
    path = lock_path(recipe.path)
    atomic_write(path, json.dumps(build_lock(recipe, registry), indent=2, sort_keys=True) + "\n")
    return path


def read_lock(recipe_path: Path) -> dict[str, Any] | None:
    """The recipe's lock, or None when there is none; a RecipeError when it is unreadable."""
    path = lock_path(recipe_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecipeError([Problem(f"cannot read the lock: {exc}", file=str(path))]) from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
        raise RecipeError(
            [Problem("not a lock this llmrun understands; write it again", file=str(path))]
        )
    return data


def drift(locked: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a lock and the current state, one line each (empty: nothing)."""
    out: list[str] = []
    was, now = locked.get("llmrun", {}), current["llmrun"]
    if was.get("version") != now["version"]:
        out.append(f"llmrun version: locked {was.get('version')}, installed {now['version']}")
    if locked.get("job_hash") != current["job_hash"]:
        out.append(
            "the job changed (data, prompt, provider, generation or postprocess settings): "
            f"hash {locked.get('job_hash')} locked, {current['job_hash']} now"
        )
    if locked.get("models") != current["models"]:
        out.append(f"models: locked {locked.get('models')}, now {current['models']}")
    out += _compare(
        "component",
        locked.get("components", {}),
        current["components"],
        lambda c: f"{c['name']} from {c['package']} {c['version']}",
    )
    out += _compare("file", locked.get("files", {}), current["files"], lambda h: f"sha256 {h[:12]}")
    return out


def _compare(what: str, old: Mapping[str, Any], new: Mapping[str, Any], show: Any) -> list[str]:
    out = []
    for key in sorted({*old, *new}):
        if key not in new:
            out.append(f"{what} {key}: locked ({show(old[key])}), now gone")
        elif key not in old:
            out.append(f"{what} {key}: new ({show(new[key])}), not in the lock")
        elif old[key] != new[key]:
            out.append(f"{what} {key}: locked {show(old[key])}, now {show(new[key])}")
    return out


def check_lock(recipe: Recipe, registry: Registry, *, locked: bool) -> list[str]:
    """Compare the recipe with its lock: the differences (to warn about), or LockDrift when
    ``locked`` and anything differs or there is no lock."""
    path = lock_path(recipe.path)
    stored = read_lock(recipe.path)
    if stored is None:
        if locked:
            raise LockDrift(
                [
                    Problem(
                        f"--locked, but there is no lock; write one with `llmrun lock "
                        f"{recipe.path.name}`",
                        file=str(path),
                    )
                ]
            )
        return []
    changes = drift(stored, build_lock(recipe, registry))
    if changes and locked:
        problems = [Problem(change, file=str(path)) for change in changes]
        problems.append(
            Problem(
                f"--locked refuses to run a drifted recipe; if the changes are intended, "
                f"run `llmrun lock {recipe.path.name}` again",
                file=str(path),
            )
        )
        raise LockDrift(problems)
    return changes


def installed_plugins() -> dict[str, str]:
    """Every installed distribution with an ``llmrun`` entry point: name -> version (without
    importing any of them)."""
    found: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        if dist is not None:
            found[dist.metadata["Name"] or "?"] = dist.version
    return dict(sorted(found.items()))


def file_hashes(recipe: Recipe) -> dict[str, str]:
    """sha256 of each file the recipe reads, keyed by its path relative to the recipe."""
    base = recipe.base_dir
    files: dict[str, str] = {}
    options: list[Any] = [recipe.data.options, recipe.provider.options]
    options += [spec.options for spec in recipe.postprocess]
    scope = recipe.access.scope(base)
    for path in _named_files(options, base):
        # Only files the recipe may read: a lock must not hash (and so probe) /etc/shadow.
        if path != recipe.output_path and scope.contains(path):
            files[_relative(path, base)] = _sha256(path)
    for name in sorted(_included_templates(recipe)):
        path = (base / name).resolve()
        if path.is_file():
            files[_relative(path, base)] = _sha256(path)
    return dict(sorted(files.items()))


def _named_files(values: Iterable[Any], base: Path) -> Iterator[Path]:
    for value in values:
        value = thaw(value)
        if isinstance(value, dict):
            yield from _named_files(value.values(), base)
        elif isinstance(value, list):
            yield from _named_files(value, base)
        elif isinstance(value, str) and value and "\n" not in value and len(value) < 1024:
            try:
                path = (base / value).resolve()
                if path.is_file():
                    yield path
            except (OSError, ValueError):
                continue  # not a path at all


def _included_templates(recipe: Recipe) -> set[str]:
    """Template files the prompt includes, imports or extends, followed recursively."""
    env = make_environment(recipe.base_dir)
    seen: set[str] = set()
    sources = [source for _, source in recipe.messages]
    while sources:
        source = sources.pop()
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError:
            continue  # the recipe loader reports it
        for name in jinja2.meta.find_referenced_templates(ast):
            if name is None or name in seen:
                continue  # a computed name cannot be known before rendering
            seen.add(name)
            path = recipe.base_dir / name
            if path.is_file():
                sources.append(path.read_text(encoding="utf-8", errors="replace"))
    return seen


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
