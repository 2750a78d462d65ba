"""The built-ins, the plugins in plugins/ and a scaffolded plugin import only llmrun's public API.

Public: ``llmrun`` (the names in its ``__all__``) and ``llmrun.hookspecs`` for every component and
observer; ``llmrun.engine_api`` in addition for a plugin distribution (an engine such as
llmrun-ray). Anything else, ``llmrun.wire.retry`` or ``from ..jsonio import loads`` in a
built-in, is a module that may change under a plugin without notice. ``lint-imports`` holds the
built-ins to this too; this test also covers plugins/, which import-linter does not see, and
keeps that contract's list of modules complete.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import llmrun
from llmrun import engine_api

ROOT = Path(__file__).resolve().parents[1]
FOR_COMPONENTS = frozenset({"llmrun", "llmrun.hookspecs"})
FOR_PLUGINS = FOR_COMPONENTS | {"llmrun.engine_api"}
EXPORTS = {"llmrun": set(llmrun.__all__), "llmrun.engine_api": set(engine_api.__all__)}


def forbidden_imports(
    source: str, module: str, allowed: Iterable[str], *, own: str | None = None
) -> list[str]:
    """Each import of ``source`` (the module named ``module``) that reaches into llmrun beyond
    ``allowed``, as ``line: what``; imports within the package ``own`` are the module's own."""
    allowed = frozenset(allowed)
    package = module.rsplit(".", 1)[0]
    found = []

    def check(line: int, target: str, names: Iterable[str] = ()) -> None:
        if own and (target == own or target.startswith(own + ".")):
            return
        if target != "llmrun" and not target.startswith("llmrun."):
            return
        if target not in allowed:
            found.append(f"{line}: {target}")
        elif target in EXPORTS:  # a name not exported is a module, or a name behind the API
            found.extend(f"{line}: {target}.{n}" for n in names if n not in EXPORTS[target])

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's own package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            check(node.lineno, target, [a.name for a in node.names])
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _scan(files: Iterable[Path], root: Path, allowed: frozenset[str], own: str) -> list[str]:
    problems = []
    for path in files:
        module = _module_name(path, root)
        if path.name == "__init__.py":
            module += ".__init__"  # its relative imports resolve against the package itself
        for problem in forbidden_imports(
            path.read_text(encoding="utf-8"), module, allowed, own=own
        ):
            problems.append(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{problem}"
            )
    return problems


def test_the_checker_finds_what_it_must() -> None:
    """The scanner is the test: on sources with a forbidden import it must report each one."""
    builtin = "llmrun.builtins.loaders.example"
    bad = """
from ...wire.retry import classify_http
from ...jsonio import loads
from ..openai_wire import OpenAIShaped
import llmrun.run.engine
from llmrun import jsonio, CallError
from llmrun.engine_api import Engine
def later():
    from llmrun.values import Row
"""
    assert forbidden_imports(bad, builtin, FOR_COMPONENTS, own="llmrun.builtins") == [
        "2: llmrun.wire.retry",
        "3: llmrun.jsonio",
        "5: llmrun.run.engine",
        "6: llmrun.jsonio",
        "7: llmrun.engine_api",
        "9: llmrun.values",
    ]
    good = """
import llmrun
from llmrun import CallError, Reply, classify_http, hookimpl
from llmrun.hookspecs import Register
from .openai_wire import OpenAIShaped
from . import loaders
import httpx
"""
    assert forbidden_imports(good, builtin, FOR_COMPONENTS, own="llmrun.builtins") == []
    # An engine plugin may use the engine API; a component may not.
    engine = "from llmrun.engine_api import make_engine\n"
    assert forbidden_imports(engine, "llmrun_x.driver", FOR_PLUGINS, own="llmrun_x") == []
    behind = "from llmrun.engine_api import Work, annotations\n"
    assert forbidden_imports(behind, "llmrun_x.driver", FOR_PLUGINS, own="llmrun_x") == [
        "1: llmrun.engine_api.annotations"
    ]
    assert forbidden_imports(engine, "llmrun_x.driver", FOR_COMPONENTS, own="llmrun_x") == [
        "1: llmrun.engine_api"
    ]


def test_builtins_import_only_the_public_api() -> None:
    files = sorted((ROOT / "llmrun/builtins").rglob("*.py"))
    assert len(files) > 20
    assert _scan(files, ROOT, FOR_COMPONENTS, own="llmrun.builtins") == []


def test_plugins_import_only_the_public_api() -> None:
    """Each distribution's package (not its tests, which may look inside what they test)."""
    packages = [
        p.parent
        for p in sorted(ROOT.glob("plugins/*/*/__init__.py"))
        if p.parent.name not in ("tests", "build")
    ]
    names = {p.name for p in packages}
    assert {"llmrun_ray", "llmrun_parquet", "llmrun_hf", "llmrun_wandb"} <= names
    problems = []
    for package in packages:
        files = sorted(package.rglob("*.py"))
        problems += _scan(files, package.parent, FOR_PLUGINS, own=package.name)
    assert problems == []


@pytest.mark.parametrize("kind", ["postprocessor", "loader", "provider"])
def test_a_scaffolded_plugin_imports_only_the_public_api(kind: str, tmp_path: Path) -> None:
    from llmrun.commands.plugin import scaffold_plugin

    scaffold_plugin("shout", tmp_path / "dist", kind=kind)
    # Its package; its tests use llmrun.testing, the fixtures shipped for plugin authors.
    package = next(p.parent for p in (tmp_path / "dist").glob("*/__init__.py"))
    files = sorted(package.rglob("*.py"))
    assert any("import llmrun" in f.read_text(encoding="utf-8") for f in files)
    assert _scan(files, tmp_path / "dist", FOR_COMPONENTS, own=package.name) == []


def test_the_import_linter_contract_names_every_module_but_the_public_ones() -> None:
    """A module added to llmrun is forbidden to the built-ins until it is made public."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")  # CI: 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    contract = next(c for c in contracts if c["name"].startswith("built-in components import only"))
    modules = {f"llmrun.{m.name}" for m in pkgutil.iter_modules(llmrun.__path__)}
    expected = modules - FOR_COMPONENTS - {"llmrun.builtins"}
    assert "llmrun.wire" in expected and "llmrun.engine_api" in expected
    assert set(contract["forbidden_modules"]) == expected


def test_every_public_name_resolves_and_is_documented() -> None:
    """Both APIs are listed in docs/plugins.md's section on them, every name importable."""
    text = (ROOT / "docs/plugins.md").read_text(encoding="utf-8")
    section = text.split("## The public API", 1)[-1].split("\n## ", 1)[0]
    assert engine_api.__all__ == sorted(engine_api.__all__)
    missing = []
    for module, names in ((llmrun, llmrun.__all__), (engine_api, engine_api.__all__)):
        for name in names:
            assert getattr(module, name) is not None, name
            if not re.search(rf"`{re.escape(name)}[`(]", section):  # `name` or `name(...)`
                missing.append(f"{module.__name__}.{name}")
    assert missing == [], "docs/plugins.md's public API section does not list these"


def test_the_engine_api_loads_only_the_names_asked_for() -> None:
    """A Ray limiter process takes the key pool from it, and must not pay for the engine."""
    code = (
        "import sys; from llmrun.engine_api import KeyPool, Budget, fingerprint; "
        "print(sorted(m for m in ('llmrun.run.engine', 'llmrun.api', 'llmrun.commands.main') "
        "if m in sys.modules)); from llmrun.engine_api import Engine; "
        "print('llmrun.run.engine' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


def test_the_command_never_imports_httpxs_own_command_line_client(tmp_path: Path) -> None:
    """httpx imports its CLI (click, pygments' lexers, rich.syntax) whenever click and pygments
    are installed, as here (uvicorn brings click): 26 ms of every llmrun start, for nothing."""
    assert importlib.util.find_spec("click") is not None  # else this shows nothing
    (tmp_path / "data.jsonl").write_text('{"id": "a", "text": "x"}\n', encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: t\ndata: {path: data.jsonl, id: id}\nprompt: 'Say {{ text }}'\n"
        "provider: {name: mock}\noutput: {path: out.jsonl}\n",
        encoding="utf-8",
    )
    code = (
        "import sys; from llmrun.commands.main import main; "
        f"status = main(['run', {str(recipe)!r}, '-q']); "
        "print(sorted(m for m in ('httpx', 'httpx._main', 'click', 'pygments.lexers') "
        "if sys.modules.get(m) is not None)); sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['httpx']"
