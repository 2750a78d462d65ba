"""``llmrun plugin new NAME``: scaffold a plugin distribution (templates in llmrun/scaffold/).

The distribution ``llmrun-NAME`` holds the package ``llmrun_NAME`` with a working component
registered as ``NAME`` (a postprocessor, or with ``--kind`` a loader or a provider), a pyproject
declaring the ``llmrun`` entry point and the plugin API it needs, a README, and tests using the
fixtures llmrun ships for plugin authors. It installs and passes its tests as generated
(tests/test_scaffold.py proves it for every kind, in a fresh virtual environment).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# kind -> (what it does, for the README; how a recipe uses it)
KINDS: dict[str, tuple[str, str]] = {
    "postprocessor": (
        "it records the length of each reply in the field `${name}_chars` and, with\n"
        "`upper: true`, upper-cases the reply.",
        "postprocess:\n  - ${name}: {upper: true}",
    ),
    "loader": (
        "one record per non-blank line of a text file, `{line: N, text: ...}`.",
        "data: {loader: ${name}, path: notes.txt, id: line}",
    ),
    "provider": (
        "calls an OpenAI-compatible chat-completions server (a starting point for your own\n"
        "wire format).",
        "provider: {name: ${name}, base_url: http://localhost:8000/v1, model: my-model}",
    ),
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plugin", help="tools for plugin authors")
    sub = p.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", required=True)
    new = sub.add_parser("new", help="scaffold a plugin distribution that passes its own tests")
    new.add_argument("name", help="the component's name, e.g. shout (lower case, digits, _)")
    new.add_argument("--dir", metavar="PATH", help="where to create it (default ./llmrun-NAME)")
    new.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="postprocessor",
        help="the component it starts with (default postprocessor)",
    )
    new.set_defaults(handler=cmd_plugin_new)


def cmd_plugin_new(args: argparse.Namespace, err: Any) -> int:
    from pathlib import Path

    from ..errors import RecipeError

    name = str(args.name)
    if not NAME.match(name):
        raise RecipeError(
            f"plugin name {name!r}: use lower-case letters, digits and _, starting with a letter"
        )
    target = Path(args.dir or f"llmrun-{name.replace('_', '-')}")
    if target.exists() and any(target.iterdir()):
        raise RecipeError(f"{target} exists and is not empty; choose another --dir")
    written = scaffold_plugin(name, target, kind=args.kind)
    err.print(f"created {target} ({len(written)} files); next:", markup=False)
    err.print(f"  cd {target} && pip install -e '.[test]' && python -m pytest", markup=False)
    return 0


def scaffold_plugin(name: str, target: Any, *, kind: str = "postprocessor") -> list[Any]:
    """Fill the templates for plugin ``name`` into the folder ``target``; the files written."""
    from importlib import resources
    from pathlib import Path
    from string import Template

    from ..__about__ import __version__
    from ..hookspecs import PLUGIN_API

    module = f"llmrun_{name}"
    values = {
        "name": name,
        "kind": kind,
        "module": module,
        "dist": f"llmrun-{name.replace('_', '-')}",
        "class_name": "".join(part.capitalize() for part in name.split("_")) or "Plugin",
        "llmrun_version": __version__,
        "plugin_api": PLUGIN_API,
    }
    summary, usage = KINDS[kind]
    values["summary"] = Template(summary).substitute(values)
    values["usage"] = Template(usage).substitute(values)
    root = resources.files("llmrun").joinpath("scaffold/plugin")
    layout = {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        f"kinds/{kind}/component.py.tmpl": f"{module}/__init__.py",
        f"kinds/{kind}/test.py.tmpl": f"tests/test_{name}.py",
    }
    written: list[Path] = []
    for source, dest in layout.items():
        text = Template(root.joinpath(source).read_text(encoding="utf-8")).substitute(values)
        path = Path(target) / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
