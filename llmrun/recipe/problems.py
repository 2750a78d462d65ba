"""Recipe problems: what is wrong, told with the file, line, column and key path where it is.

Used by ``recipe.load_recipe`` (schema, template and selection problems of a recipe file).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import jsonschema

from ..access import OutsideError, ReadScope
from ..errors import Problem, RecipeError
from .selection import compile_filter, parse_shard
from .templates import make_environment
from .yamlsource import Positions, dotted, position_of


def locate(
    path: tuple[Any, ...], positions: Positions, filename: str
) -> tuple[str, int | None, int | None]:
    line, col = position_of(path, positions)
    if line == 0:
        return "--set", None, None
    return filename, line, col


def schema_problems(
    instance: Any,
    schema: Mapping[str, Any],
    prefix: tuple[Any, ...],
    positions: Positions,
    filename: str,
    core_keys: Sequence[str] = (),
) -> list[Problem]:
    """Problems of ``instance`` against ``schema``; ``core_keys`` are also allowed at its top
    (a component section holds llmrun's keys beside the component's options)."""
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    top = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    for err in [leaf for e in top for leaf in leaves(e)]:
        path = (*prefix, *err.absolute_path)
        sub_schema = err.schema if isinstance(err.schema, Mapping) else {}
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list(sub_schema.get("properties", {}))
            allowed += [] if err.absolute_path else [k for k in core_keys if k not in allowed]
            extras = [
                k
                for k in err.instance
                if k not in allowed
                and not any(re.search(p, k) for p in sub_schema.get("patternProperties", {}))
            ]
            for extra in extras:
                file, line, col = locate((*path, extra), positions, filename)
                hint = difflib.get_close_matches(extra, allowed, n=1)
                msg = f"unknown key {extra!r}"
                msg += (
                    f" (did you mean {hint[0]!r}?)"
                    if hint
                    else (f"; allowed: {', '.join(allowed)}" if allowed else "")
                )
                problems.append(Problem(msg, dotted((*path, extra)), file, line, col))
            continue
        file, line, col = locate(path, positions, filename)
        problems.append(Problem(message(err), dotted(path), file, line, col))
    return problems


def leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors worth showing for ``err``: for a oneOf/anyOf failure, those of the branch the
    value was most likely meant for (right type, fewest and then deepest errors), so a typo in
    one form of ``prompt`` reads "unknown key 'sytem'", not "not valid under any schema"."""
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        return [err]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        errs
        for errs in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errs)
    ]
    if not fitting:
        return [err]  # no branch has the value's type: _message lists the types allowed
    best = min(fitting, key=lambda errs: (len(errs), -max(len(e.absolute_path) for e in errs)))
    return [leaf for e in best for leaf in leaves(e)]


def message(err: jsonschema.ValidationError) -> str:
    if err.validator == "required":
        return str(err.message).replace("is a required property", "is required")
    if err.validator in ("oneOf", "anyOf"):
        types = [
            repr(e.validator_value)
            for e in err.context or ()
            if e.validator == "type" and not e.relative_path and isinstance(e.validator_value, str)
        ]
        if types:
            return f"{short(err.instance)} is not of type {' or '.join(dict.fromkeys(types))}"
        return f"{short(err.instance)} is not valid here"
    return str(err.message)


def short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def template_problems(
    prompt: Any,
    base_dir: Path,
    positions: Positions,
    filename: str,
    scope: ReadScope | None = None,
    *,
    at: tuple[Any, ...] = ("prompt",),
) -> list[Problem]:
    """Compile each template of the ``prompt`` section at ``at``, so a syntax error, a reach
    past the sandbox or a read outside the recipe's folder is reported with the recipe's other
    faults and where it is, not when the first record is rendered."""
    sources: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(prompt, str):
        sources.append((at, prompt))
    elif isinstance(prompt, dict):
        sources += [((*at, k), prompt[k]) for k in ("system", "user") if k in prompt]
        messages = prompt.get("messages")
        for i, msg in enumerate(messages if isinstance(messages, list) else []):
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if not isinstance(content, list):
                sources.append(((*at, "messages", i, "content"), content))
                continue
            for j, part in enumerate(content):
                for key in ("text", "source"):
                    if isinstance(part, dict) and key in part:
                        sources.append(((*at, "messages", i, "content", j, key), part[key]))
        examples = prompt.get("examples")
        if isinstance(examples, dict):
            sources += [((*at, "examples", k), examples.get(k)) for k in ("user", "assistant")]
        images = prompt.get("images")
        if isinstance(images, str):
            sources.append(((*at, "images"), images))
        elif isinstance(images, list):
            sources += [((*at, "images", i), src) for i, src in enumerate(images)]
    scope = scope or ReadScope((base_dir.resolve(),))
    env = make_environment(base_dir, scope)
    problems: list[Problem] = []
    for where, source in sources:
        if not isinstance(source, str):
            continue  # the schema reports it
        try:
            ast = env.parse(source)
            env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            file, line, col = locate(where, positions, filename)
            problems.append(
                Problem(
                    f"template syntax error (template line {exc.lineno}): {exc.message}",
                    dotted(where),
                    file,
                    line,
                    col,
                )
            )
            continue
        for message in sandbox_problems(ast, scope):
            file, line, col = locate(where, positions, filename)
            problems.append(Problem(message, dotted(where), file, line, col))
    return problems


def sandbox_problems(ast: jinja2.nodes.Template, scope: ReadScope) -> list[str]:
    """What a template says it will do that the sandbox or the read scope refuses, found in
    its syntax tree before any record: an attribute starting with ``__`` (the way from a value
    to Python's internals), an include or ``load()`` of a file outside the allowed folders."""
    found: list[str] = []
    for node in ast.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        if isinstance(node, jinja2.nodes.Getattr):
            name: Any = node.attr
        else:
            assert isinstance(node, jinja2.nodes.Getitem)
            name = _constant(node.arg)
        # Dunder names are the way from a value to Python's internals (`__globals__`); a
        # record's own `_id` is data, and the sandbox itself refuses other private attributes.
        if isinstance(name, str) and name.startswith("__"):
            found.append(
                f"the template reaches for {name!r}: attributes starting with __ are not "
                "available to templates (they run in a sandbox)"
            )
    names = [("{% include %}", str(n)) for n in jinja2.meta.find_referenced_templates(ast) if n]
    for call in ast.find_all(jinja2.nodes.Call):
        if isinstance(call.node, jinja2.nodes.Name) and call.node.name == "load" and call.args:
            arg = _constant(call.args[0])
            if isinstance(arg, str):
                names.append(("load()", arg))
    for what, name in names:
        try:
            scope.check(name, what)
        except OutsideError as exc:
            found.append(str(exc))
    return list(dict.fromkeys(found))


def _constant(node: jinja2.nodes.Node) -> Any:
    return node.value if isinstance(node, jinja2.nodes.Const) else None


def selection_problems(
    section: Mapping[str, Any],
    base_dir: Path,
    positions: Positions,
    filename: str,
    scope: ReadScope | None = None,
) -> list[Problem]:
    """A bad shard or filter expression, reported with the recipe's other faults."""
    problems: list[Problem] = []
    scope = scope or ReadScope((base_dir.resolve(),))

    def check_filter(value: Any) -> None:
        compile_filter(str(value), base_dir, scope)
        ast = make_environment(base_dir, scope).parse(f"{{{{ {value} }}}}")
        for message in sandbox_problems(ast, scope):
            raise ValueError(f"data.filter: {message}")

    checks: list[tuple[str, Callable[[Any], Any]]] = [
        ("shard", lambda v: parse_shard(str(v))),
        ("filter", check_filter),
    ]
    for key, check in checks:
        if key not in section:
            continue
        try:
            check(section[key])
        except (ValueError, RecipeError) as exc:
            message = exc.problems[0].message if isinstance(exc, RecipeError) else str(exc)
            file, line, col = locate(("data", key), positions, filename)
            problems.append(Problem(message, dotted(("data", key)), file, line, col))
    return problems
