"""``steps:`` in a recipe: several calls per record, each step its own prompt (docs/steps.md).

This module checks and builds the steps; ``run/steps.py`` runs them. A step's templates and its
``when`` see the record and the earlier steps as ``steps.NAME``: a step may only name steps
before it, which is what makes the list a DAG run in order, and is checked here so that a typo
is a recipe error rather than a row error on every record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes

from ..access import ReadScope
from ..errors import Problem
from .model import ComponentSpec, StepSpec, freeze, thaw
from .problems import locate, sandbox_problems, template_problems
from .templates import make_environment
from .yamlsource import Positions, dotted

FIXED_PROVIDER_KEYS = frozenset(
    {"name", "api_keys", "api_key", "base_url", "base_urls", "endpoints", "endpoint", "headers"}
)
PostsOf = Callable[[Any, tuple[Any, ...]], list[ComponentSpec]]


def prompt_messages(prompt: Any) -> tuple[tuple[str, Any], ...]:
    """The (role, template) pairs of a ``prompt:`` section (already validated)."""
    if isinstance(prompt, str):
        return (("user", prompt),)
    if "messages" in prompt:
        if prompt["messages"] == "record":
            return ()  # the record's own (request_prompt.py)
        # A content is a template string, or (with images) a list of parts, kept frozen.
        return tuple((m["role"], freeze(m["content"])) for m in prompt["messages"])
    return tuple((role, prompt[role]) for role in ("system", "user") if role in prompt)


def build_steps(
    items: list[Any],
    *,
    base_generation: Mapping[str, Any],
    provider: Mapping[str, Any],
    base_dir: Path,
    scope: ReadScope,
    positions: Positions,
    filename: str,
    posts_of: PostsOf,
    problems: list[Problem],
) -> tuple[StepSpec, ...]:
    """The recipe's steps; faults are added to ``problems`` (the base schema has already
    checked the shape of each step)."""
    env = make_environment(base_dir, scope)
    steps: list[StepSpec] = []
    names: list[str] = []
    chain = hashlib.sha256(json.dumps(thaw(provider), sort_keys=True, default=str).encode())
    chain.update(json.dumps(thaw(base_generation), sort_keys=True, default=str).encode())

    def problem(message: str, at: tuple[Any, ...]) -> None:
        file, line, col = locate(at, positions, filename)
        problems.append(Problem(message, dotted(at), file, line, col))

    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue  # the schema reports it
        at: tuple[Any, ...] = ("steps", i)
        name = item["name"]
        if name in names:
            problem(f"step name {name!r} is used twice", (*at, "name"))
        prompt = item.get("prompt")
        if isinstance(prompt, dict) and prompt.get("messages") == "record":
            problem(
                "a step renders its own prompt: `messages: record` is for one-call recipes",
                (*at, "prompt"),
            )
            continue
        problems.extend(
            template_problems(prompt, base_dir, positions, filename, scope, at=(*at, "prompt"))
        )
        sources = _template_sources(prompt)
        when = item.get("when")
        if isinstance(when, str):
            try:
                env.compile_expression(when)
                for message in sandbox_problems(env.parse(f"{{{{ {when} }}}}"), scope):
                    problem(message, (*at, "when"))
            except jinja2.TemplateSyntaxError as exc:
                problem(f"`when` is not a Jinja expression: {exc.message}", (*at, "when"))
                when = None
        reads: set[str] = set()
        for source in [*sources, *([f"{{{{ {when} }}}}"] if isinstance(when, str) else [])]:
            try:
                reads |= _steps_named(env.parse(source))
            except jinja2.TemplateSyntaxError:
                continue  # template_problems reports it
        for read in sorted(reads):
            if read not in names:
                later = read == name or any(
                    isinstance(x, dict) and x.get("name") == read for x in items[i:]
                )
                problem(
                    f"step {name!r} reads steps.{read}, "
                    + (
                        "which comes at or after it: a step reads only earlier steps"
                        if later
                        else "and there is no step of that name"
                    ),
                    (*at, "prompt"),
                )
        n = int(item.get("n", 1))
        select_value = item.get("select", "first")
        select: tuple[str, str | None] = (
            ("first", None)
            if not isinstance(select_value, dict)
            else next((k, str(v)) for k, v in select_value.items())
        )
        if n == 1 and "select" in item:
            problem("`select` chooses among samples: set `n` above 1", (*at, "select"))
        posts = posts_of(item.get("postprocess") or [], (*at, "postprocess"))
        generation = {**base_generation, **(item.get("generation") or {})}
        options = dict(item.get("provider") or {})
        for key in sorted(set(options) & FIXED_PROVIDER_KEYS):
            # One key pool, one endpoint and one set of pacing for the whole run: a step
            # changes how the provider is asked, not whom with which key.
            problem(
                f"a step may change the provider's options (the model...), not `{key}`: "
                "every step uses the recipe's provider, keys and endpoint",
                (*at, "provider", key),
            )
        chain.update(
            json.dumps(
                thaw({"step": item, "generation": generation}), sort_keys=True, default=str
            ).encode()
        )
        images = prompt.get("images", ()) if isinstance(prompt, dict) else ()
        steps.append(
            StepSpec(
                name=name,
                messages=prompt_messages(prompt) if prompt is not None else (),
                generation=freeze(generation),
                postprocess=tuple(posts),
                provider_options=freeze(options),
                when=when if isinstance(when, str) else None,
                n=n,
                select=select,
                reads=tuple(sorted(reads)),
                images=(images,) if isinstance(images, str) else tuple(images),
                image_detail=prompt.get("image_detail") if isinstance(prompt, dict) else None,
                examples=freeze(prompt.get("examples")) if isinstance(prompt, dict) else None,
                hash=chain.copy().hexdigest()[:16],
            )
        )
        names.append(name)
    return tuple(steps)


def _template_sources(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, dict):
        return []
    found = [str(prompt[k]) for k in ("system", "user") if isinstance(prompt.get(k), str)]
    for message in prompt.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            found.append(content)
        elif isinstance(content, list):
            found += [
                str(p.get("text") or p.get("source") or "") for p in content if isinstance(p, dict)
            ]
    images = prompt.get("images")
    found += [images] if isinstance(images, str) else [str(x) for x in images or []]
    return found


def _steps_named(ast: jinja2.nodes.Template) -> set[str]:
    """The NAMEs of ``steps.NAME`` and ``steps["NAME"]`` in a template."""
    found: set[str] = set()
    for node in ast.find_all(jinja2.nodes.Getattr):
        assert isinstance(node, jinja2.nodes.Getattr)
        if isinstance(node.node, jinja2.nodes.Name) and node.node.name == "steps":
            found.add(node.attr)
    for item in ast.find_all(jinja2.nodes.Getitem):
        assert isinstance(item, jinja2.nodes.Getitem)
        key = item.arg
        named = isinstance(item.node, jinja2.nodes.Name) and item.node.name == "steps"
        if named and isinstance(key, jinja2.nodes.Const) and isinstance(key.value, str):
            found.add(key.value)
    return found
