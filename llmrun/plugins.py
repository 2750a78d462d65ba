"""Finding plugins and the components they register.

``get_plugin_manager()`` builds a fresh manager (no import-time global): the built-ins first,
then every entry point of group ``llmrun``. The environment variable ``LLMRUN_PLUGINS`` limits
which entry points load: unset loads all, an empty value loads none, ``a,b`` loads only those
entry-point names. A plugin that fails to import, needs a newer plugin API than this llmrun
offers (its module's ``LLMRUN_API``), or fails to register is recorded in ``Registry.failures``
and skipped: it is an error only for a recipe that names one of its components.

``load_registry(lazy=True)`` (what ``validate``, ``plan`` and ``lock`` use) registers only the
built-ins and imports the entry points the first time a name is asked for that the built-ins do
not have: a recipe using only built-in components never imports a third-party plugin. On a miss
for ``NAME``, an entry point named ``NAME`` (the layout ``llmrun plugin new`` writes) is imported
alone first; entry-point names need not match their components, so if that does not provide it,
all the others are imported.
"""

from __future__ import annotations

import difflib
import os
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .__about__ import __version__
from .errors import PluginError, Problem, RecipeError

KIND_HOOKS: dict[str, str] = {
    "loader": "register_loaders",
    "provider": "register_providers",
    "postprocessor": "register_postprocessors",
    "writer": "register_writers",
    "engine": "register_engines",
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
    "llmrun.builtins.openai_images",
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
    """Every component that registered, by kind and name, plus the plugins that failed.

    ``pending`` holds entry points not imported yet (a lazy registry); ``get`` imports them on
    the first name the loaded plugins lack, and ``load_pending()`` imports them at once.
    """

    components: dict[str, dict[str, ComponentInfo]] = field(
        default_factory=lambda: {kind: {} for kind in KIND_HOOKS}
    )
    failures: list[PluginFailure] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None
    pending: list[metadata.EntryPoint] = field(default_factory=list)

    def get(self, kind: str, name: str) -> ComponentInfo:
        """The component, or a PluginError that says why not and what exists."""
        found = self.components[kind].get(name)
        if found is None and self.pending:
            # An entry point named like the component (the `plugin new` layout) is tried alone
            # first; failing that, the rest are imported.
            self.load_pending(only=name)
            found = self.components[kind].get(name)
        if found is None and self.pending:
            self.load_pending()
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
        self.load_pending()
        for kind in KIND_HOOKS:
            yield from sorted(self.components[kind].values(), key=lambda c: c.name)

    def load_pending(self, only: str | None = None) -> None:
        """Import the entry points a lazy registry has not imported yet (those named ``only``,
        when given), and register them."""
        eps = [ep for ep in self.pending if only is None or ep.name == only]
        self.pending = [ep for ep in self.pending if ep not in eps]
        if not eps:
            return
        if self.manager is None:
            self.manager = new_manager()
        names = [n for n in (_load_entry_point(self.manager, ep, self.failures) for ep in eps) if n]
        _register_components(self, names)


def new_manager() -> pluggy.PluginManager:
    """An empty manager knowing llmrun's hook specifications."""
    pm = pluggy.PluginManager("llmrun")
    pm.add_hookspecs(hookspecs)
    return pm


def get_plugin_manager(
    *, entry_points: bool = True, plugins: Mapping[str, object] | None = None
) -> tuple[pluggy.PluginManager, list[PluginFailure]]:
    """A manager with the built-ins, the installed entry points (unless disabled) and any
    ``plugins`` given by name (how tests bring in the plugin under test)."""
    import importlib

    pm = new_manager()
    for modname in BUILTIN_MODULES:
        pm.register(importlib.import_module(modname), name=modname)
    failures: list[PluginFailure] = []
    if entry_points:
        for ep in _selected_entry_points():
            _load_entry_point(pm, ep, failures)
    for name, plugin in (plugins or {}).items():
        problem = api_problem(plugin)
        if problem is not None:
            failures.append(PluginFailure(name, "?", "?", problem))
            continue
        pm.register(plugin, name=name)
    return pm, failures


def load_registry(
    *,
    entry_points: bool = True,
    plugins: Mapping[str, object] | None = None,
    lazy: bool = False,
) -> Registry:
    """Build the registry by calling each plugin's registration hooks, one plugin at a time.

    With ``lazy``, entry points are imported only when a name is asked for that the built-ins
    (and ``plugins``) do not provide (see the module's docstring)."""
    pm, failures = get_plugin_manager(entry_points=entry_points and not lazy, plugins=plugins)
    registry = Registry(failures=failures, manager=pm)
    _register_components(registry, [name for name, _ in pm.list_name_plugin()])
    if entry_points and lazy:
        registry.pending = _selected_entry_points()
    return registry


def _load_entry_point(
    pm: pluggy.PluginManager, ep: metadata.EntryPoint, failures: list[PluginFailure]
) -> str | None:
    """Import one entry point and register it; its name, or None when it failed (recorded)."""
    package, version = _dist_of(ep)
    try:
        plugin = ep.load()
        problem = api_problem(plugin)
        if problem is not None:
            failures.append(PluginFailure(ep.name, package, version, problem))
            return None
        pm.register(plugin, name=ep.name)
    except Exception as exc:  # a broken plugin must never break the CLI
        failures.append(PluginFailure(ep.name, package, version, _one_line(exc)))
        return None
    return ep.name


def _register_components(registry: Registry, plugin_names: list[str]) -> None:
    """Call the registration hooks of the named plugins (already in the manager)."""
    pm = registry.manager
    assert pm is not None
    wanted = set(plugin_names)
    dists = _entry_point_dists() if any(n not in BUILTIN_MODULES for n in wanted) else {}
    raised: dict[str, tuple[str, str, str]] = {}  # plugin -> (package, version, error)
    for kind, hook_name in KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            if plugin_name not in wanted:
                continue
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
                # A plugin's schema is checked against JSON Schema's own before any recipe is
                # read with it. The built-ins' are checked by the suite instead
                # (tests/test_plugins_cli.py): at every start, the 26 of them cost 40 ms of each
                # command's ~300.
                problem = None if _plugin in BUILTIN_MODULES else _schema_problem(cls)
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


_SPEC = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(\d+)\s*$")


def api_problem(plugin: object) -> str | None:
    """Why ``plugin`` cannot work with this llmrun's plugin API, or None.

    A plugin module may declare ``LLMRUN_API``: the plugin API versions it works with, as
    comma-separated conditions on the whole number ``llmrun.PLUGIN_API`` (``">=1"``,
    ``">=1,<3"``; a bare ``"2"`` means ``"==2"``). Without it, any version is assumed to do.
    """
    wanted = getattr(plugin, "LLMRUN_API", None)
    if wanted is None:
        return None
    have = int(hookspecs.PLUGIN_API)
    checks = {
        ">=": have.__ge__,
        "<=": have.__le__,
        "==": have.__eq__,
        "!=": have.__ne__,
        ">": have.__gt__,
        "<": have.__lt__,
    }
    failed: list[tuple[str, int]] = []
    for part in str(wanted).split(","):
        match = _SPEC.match(part)
        if match is None:
            return (
                f"LLMRUN_API = {wanted!r} is not understood "
                "(expected conditions like '>=1' or '>=1,<3')"
            )
        op, number = match.group(1) or "==", int(match.group(2))
        if not checks[op](number):
            failed.append((op, number))
    if not failed:
        return None
    newer = any(op in (">=", ">", "==") and number > have for op, number in failed)
    advice = (
        "upgrade llmrun (pip install -U llmrun)"
        if newer
        else "install an older llmrun, or a newer release of the plugin"
    )
    return (
        f"needs llmrun plugin API {wanted}, but llmrun {__version__} provides plugin API "
        f"{have}: {advice}"
    )


class Observers:
    """Calls the observer hooks through pluggy (its order, ``tryfirst``/``trylast`` and
    wrappers hold), each implementation guarded so that one failing observer cannot stop a run
    or the observers after it: it is reported once, then skipped for the rest of the run."""

    HOOKS = ("run_started", "record_done", "run_finished")

    def __init__(self, pm: pluggy.PluginManager | None, warn: Callable[[str], None]) -> None:
        self._pm = pm
        self._warn = warn
        self._failed: set[tuple[str, str]] = set()  # (plugin name, hook)
        self._has: dict[str, bool] = {}
        for hook in self.HOOKS:
            impls = getattr(pm.hook, hook).get_hookimpls() if pm is not None else []
            for impl in impls:
                if not (impl.hookwrapper or impl.wrapper):
                    self._guard(hook, impl)
            self._has[hook] = bool(impls)

    @property
    def wants_records(self) -> bool:
        return self._has["record_done"]

    def call(self, hook: str, **kwargs: Any) -> None:
        if self._pm is None or not self._has[hook]:
            return
        try:
            getattr(self._pm.hook, hook)(**kwargs)
        except Exception as exc:  # a wrapper raised: it is the plugin's, never the run's
            self._has[hook] = False
            self._warn(f"observer wrapper of {hook} raised {_one_line(exc)}; {hook} is off now")

    def _guard(self, hook: str, impl: Any) -> None:
        # A manager serves one run at a time; a registry reused for another run gets new guards
        # around the same functions.
        function = getattr(impl.function, "__llmrun_observed__", impl.function)
        key = (impl.plugin_name, hook)

        def guarded(*args: Any) -> Any:
            if key in self._failed:
                return None
            try:
                return function(*args)
            except Exception as exc:
                self._failed.add(key)
                self._warn(
                    f"observer {impl.plugin_name}.{hook} raised {_one_line(exc)}; "
                    "it is not called again in this run"
                )
                return None

        guarded.__llmrun_observed__ = function  # type: ignore[attr-defined]
        impl.function = guarded


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


def build_component(registry: Registry, kind: str, spec: Any, context: Any) -> Any:
    """The component a recipe section names (a ``recipe.ComponentSpec``), built with its
    options and the recipe's ``ComponentContext``."""
    cls = registry.get(kind, spec.name).cls
    runs_code = getattr(cls, "runs_code", None)
    what = runs_code(spec.options) if callable(runs_code) else None
    access = getattr(context, "access", None)
    if what and not getattr(access, "trust", False):
        # The one gate every command goes through: code a recipe names is never imported
        # unless the user trusts the recipe (never the recipe itself).
        raise RecipeError([Problem(untrusted_message(what), spec.where)])
    try:
        return cls(spec.options, context)
    except Exception as exc:
        import httpx

        if not isinstance(exc, httpx.InvalidURL):
            raise
        # A URL the schema's pattern let through (``http://127.0.0.1:1:2/v1``) is the
        # recipe's fault, not a bug: say which section holds it.
        raise RecipeError(
            [Problem(f"{kind} {spec.name!r}: not a usable URL: {exc}", spec.where)]
        ) from None


def untrusted_message(what: str) -> str:
    return (
        f"the recipe names code to run ({what}); it is not run unless you trust this recipe: "
        "pass --trust, or add its path (a glob) to LLMRUN_TRUST"
    )
