"""Finding plugins and the components they register.

``get_plugin_manager()`` builds a fresh manager (no import-time global): the built-ins first,
then every entry point of group ``llmrun``. The environment variable ``LLMRUN_PLUGINS`` limits
which entry points load: unset loads all, an empty value loads none, ``a,b`` loads only those
entry-point names. A plugin that fails to import or to register is recorded in
``Registry.failures`` and skipped: it is an error only for a recipe that names one of its
components.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .__about__ import __version__
from .errors import PluginError

KIND_HOOKS: dict[str, str] = {
    "loader": "register_loaders",
    "provider": "register_providers",
    "postprocessor": "register_postprocessors",
    "writer": "register_writers",
}
BUILTIN_MODULES = (
    "llmrun.builtins.loaders",
    "llmrun.builtins.mock",
    "llmrun.builtins.openai",
    "llmrun.builtins.postprocessors",
    "llmrun.builtins.writers",
    "llmrun.builtins.anthropic",
    "llmrun.builtins.openai_completions",
    "llmrun.builtins.openai_embeddings",
    "llmrun.builtins.azure",
    "llmrun.builtins.gemini",
)
ENTRY_POINT_GROUP = "llmrun"


@dataclass(frozen=True)
class ComponentInfo:
    kind: str
    name: str
    cls: type
    plugin: str  # entry-point name, or the built-in module
    package: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    package: str
    version: str
    error: str  # one line: exception type and message
    names: tuple[str, ...] = ()  # components it registered before failing, if any


@dataclass
class Registry:
    """Every component that registered, by kind and name, plus the plugins that failed."""

    components: dict[str, dict[str, ComponentInfo]] = field(
        default_factory=lambda: {kind: {} for kind in KIND_HOOKS}
    )
    failures: list[PluginFailure] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    def get(self, kind: str, name: str) -> ComponentInfo:
        """The component, or a PluginError that says why not and what exists."""
        found = self.components[kind].get(name)
        if found is not None:
            return found
        known = sorted(self.components[kind])
        broken = [f for f in self.failures if name in f.names or not f.names]
        msg = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        msg += f"; available: {', '.join(known) or 'none'}"
        if broken:
            msg += "; plugins that failed to load: " + "; ".join(
                f"{f.plugin} ({f.package} {f.version}): {f.error}" for f in broken
            )
        raise PluginError(msg)

    def all(self) -> Iterable[ComponentInfo]:
        for kind in KIND_HOOKS:
            yield from sorted(self.components[kind].values(), key=lambda c: c.name)


def get_plugin_manager(
    *, entry_points: bool = True, plugins: Mapping[str, object] | None = None
) -> tuple[pluggy.PluginManager, list[PluginFailure]]:
    """A manager with the built-ins, the installed entry points (unless disabled) and any
    ``plugins`` given by name (how tests bring in the plugin under test)."""
    import importlib

    pm = pluggy.PluginManager("llmrun")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_MODULES:
        pm.register(importlib.import_module(modname), name=modname)
    failures: list[PluginFailure] = []
    if entry_points:
        for ep in _selected_entry_points():
            package, version = _dist_of(ep)
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must never break the CLI
                failures.append(PluginFailure(ep.name, package, version, _one_line(exc)))
    for name, plugin in (plugins or {}).items():
        pm.register(plugin, name=name)
    return pm, failures


def load_registry(
    *, entry_points: bool = True, plugins: Mapping[str, object] | None = None
) -> Registry:
    """Build the registry by calling each plugin's registration hooks, one plugin at a time."""
    pm, failures = get_plugin_manager(entry_points=entry_points, plugins=plugins)
    registry = Registry(failures=failures, manager=pm)
    dists = _entry_point_dists()
    raised: dict[str, tuple[str, str, str]] = {}  # plugin -> (package, version, error)
    for kind, hook_name in KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            package, version = dists.get(plugin_name, ("llmrun", __version__))

            def register(
                name: str,
                cls: type,
                *,
                _kind: str = kind,
                _plugin: str = plugin_name,
                _pkg: str = package,
                _ver: str = version,
            ) -> None:
                problem = _schema_problem(cls)
                if problem is not None:  # it would break validation of every recipe using it
                    registry.failures.append(
                        PluginFailure(_plugin, _pkg, _ver, f"{_kind} {name!r}: {problem}", (name,))
                    )
                    return
                existing = registry.components[_kind].get(name)
                if existing is not None:
                    registry.failures.append(
                        PluginFailure(
                            _plugin,
                            _pkg,
                            _ver,
                            f"{_kind} {name!r} is already registered by {existing.plugin}; ignored",
                            (name,),
                        )
                    )
                    return
                registry.components[_kind][name] = ComponentInfo(
                    _kind, name, cls, _plugin, _pkg, _ver
                )

            try:
                impl.function(register=register)
            except Exception as exc:
                raised.setdefault(plugin_name, (package, version, _one_line(exc)))
    # A plugin that raised is skipped whole: what it did register may rely on what failed.
    for plugin_name, (package, version, error) in raised.items():
        names: list[str] = []
        for kind in KIND_HOOKS:
            for name, info in list(registry.components[kind].items()):
                if info.plugin == plugin_name:
                    names.append(name)
                    del registry.components[kind][name]
        registry.failures.append(PluginFailure(plugin_name, package, version, error, tuple(names)))
    return registry


class Observers:
    """Calls the observer hooks impl by impl, so one failing observer cannot stop a run."""

    def __init__(self, pm: pluggy.PluginManager | None, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self._impls: dict[str, list[Any]] = {}
        for hook in ("run_started", "record_done", "run_finished"):
            impls = list(getattr(pm.hook, hook).get_hookimpls()) if pm else []
            self._impls[hook] = impls

    @property
    def wants_records(self) -> bool:
        return bool(self._impls["record_done"])

    def call(self, hook: str, arg: Mapping[str, Any]) -> None:
        impls = self._impls[hook]
        if not impls:
            return
        argname = {"run_started": "run", "record_done": "row", "run_finished": "summary"}[hook]
        for impl in list(impls):
            try:
                impl.function(**{argname: arg})
            except Exception as exc:
                impls.remove(impl)
                self._warn(
                    f"observer {impl.plugin_name}.{hook} raised {_one_line(exc)}; "
                    "it is not called again in this run"
                )


def _selected_entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    allow = os.environ.get("LLMRUN_PLUGINS")
    if allow is None:
        return eps
    wanted = {n.strip() for n in allow.split(",") if n.strip()}
    return [ep for ep in eps if ep.name in wanted]


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version)


def _entry_point_dists() -> dict[str, tuple[str, str]]:
    return {ep.name: _dist_of(ep) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _schema_problem(cls: type) -> str | None:
    """Why the component's ``options_schema`` is not a valid JSON Schema, or None."""
    import jsonschema

    schema = getattr(cls, "options_schema", None)
    if schema is None:
        return None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path))
        return f"invalid options_schema{f' at {where}' if where else ''}: {exc.message}"
    return None


def _one_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"
