"""Prompt templates: Jinja2, strict, with record fields as variables.

Besides each field, a template can use ``record`` (the whole record, for field names that are not
identifiers). A record lacking a variable the template needs is never sent: it becomes an error
row naming the missing fields and the ones the record has.

What templates get beyond Jinja's own: ``{% include %}``/``{% import %}`` of files beside the
recipe; ``load("shots.jsonl")``, a file's content (few-shot examples) parsed by its extension;
the filters ``tojson`` (without Jinja's HTML escaping), ``truncate`` (Jinja's, in characters)
and ``truncate_tokens(n)``; few-shot turns from a file (``prompt.examples``); and images,
attached as neutral image parts (see ``values.Prompt``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import yaml

from ..access import OutsideError, ReadScope
from ..errors import Problem, RecipeError, RecordError, TemplateError
from ..images import ImageError
from ..values import Prompt
from .tokens import count_text

if TYPE_CHECKING:
    from .model import Recipe, StepSpec

ALWAYS_DEFINED = frozenset({"record"})
URL_PREFIXES = ("http://", "https://", "data:")
# Names Jinja's compiled code may bind itself (``self`` is the template): left to Jinja.
_JINJA_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})
MessageSource = tuple[str, Any]  # (role, template string or a sequence of parts)


def tojson(value: Any, indent: int | None = None) -> str:
    """JSON for a prompt: readable Unicode, no HTML escaping (Jinja's own escapes < > & ')."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def truncate_tokens(value: Any, limit: int, end: str = "...") -> str:
    """The text cut to at most ``limit`` tokens (``llmrun.recipe.tokens.count_text``), ``end``
    included when it is cut."""
    text = str(value)
    if count_text(text) <= limit:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with `end`, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_text(text[:mid] + end) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + end if lo or count_text(end) <= limit else ""


def read_data_file(path: Path) -> Any:
    """A file's content, parsed by its extension: .jsonl -> list, .json/.yaml -> value,
    .csv/.tsv -> list of dicts (strings), anything else -> text."""
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="" if suffix in (".csv", ".tsv") else None) as fh:
        if suffix in (".jsonl", ".ndjson"):
            return [json.loads(line) for line in fh if line.strip()]
        if suffix == ".json":
            return json.load(fh)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(fh)
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        return fh.read()


class _Render:
    """A message template ready to render: a fixed text; text and variables alone (``parts``:
    literal text, or the name of a variable); or a compiled template whose context (globals
    included) the caller has built."""

    __slots__ = ("fixed", "parts", "template")

    def __init__(
        self,
        template: jinja2.Template | None,
        fixed: str | None,
        parts: tuple[tuple[str, bool], ...] | None = None,
    ) -> None:
        self.template, self.fixed, self.parts = template, fixed, parts

    def __call__(self, context: dict[str, Any]) -> str:
        if self.fixed is not None:
            return self.fixed
        if self.parts is not None:
            # What Jinja's compiled code does for text and `{{ name }}` without autoescape:
            # str() of the value, and a missing name is an error (StrictUndefined); here
            # without building a Jinja context and a generator per record (a third of a
            # realistic record's rendering, benchmarks/README.md).
            out: list[str] = []
            for text, variable in self.parts:
                if not variable:
                    out.append(text)
                    continue
                try:
                    value = context[text]
                except KeyError:
                    raise jinja2.UndefinedError(f"{text!r} is undefined") from None
                out.append(value if type(value) is str else str(value))
            return "".join(out)
        assert self.template is not None
        template = self.template
        return template.environment.concat(
            template.root_render_func(template.new_context(context, shared=True))
        )


class _FolderLoader(jinja2.BaseLoader):
    """``{% include %}`` and ``{% import %}`` of files in the recipe's folder, refused when the
    name resolves (symlinks included) outside the folders the recipe may read."""

    def __init__(self, scope: ReadScope) -> None:
        self.scope = scope

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        try:
            path = self.scope.check(template, "{% include %}")
        except OutsideError as exc:
            raise TemplateError(str(exc)) from None
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise jinja2.TemplateNotFound(template) from None
        mtime = path.stat().st_mtime
        return source, str(path), lambda: path.exists() and path.stat().st_mtime == mtime


class SandboxEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox: no attribute starting with ``_`` (the way from a value to
    ``__globals__`` and ``os``), no method that changes a list or dict, bounded ranges. llmrun's
    own filters and ``load()`` are plain functions given to it, so they are allowed as is."""


def make_environment(base_dir: Path, scope: ReadScope | None = None) -> jinja2.Environment:
    """The Jinja2 environment recipes render in: sandboxed, strict, no HTML escaping, includes
    and ``load()`` relative to the recipe's folder and confined to ``scope`` (by default that
    folder alone)."""
    scope = scope or ReadScope((base_dir.resolve(),))
    env = SandboxEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=_FolderLoader(scope),
    )
    env.filters["tojson"] = tojson
    env.filters["truncate_tokens"] = truncate_tokens
    loaded: dict[str, Any] = {}

    def load(name: str) -> Any:
        # Loaded once per run, whatever the number of records; the value is shared, so
        # templates must not change it (the immutable sandbox gives them no way to).
        if name not in loaded:
            try:
                loaded[name] = read_data_file(scope.check(name, "load()"))
            except OutsideError as exc:
                raise TemplateError(str(exc)) from None
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise TemplateError(f"load({name!r}): {exc}") from None
        return loaded[name]

    env.globals["load"] = load
    return env


class PromptTemplate:
    """The recipe's messages (and images), compiled once, rendered per record."""

    def __init__(
        self,
        messages: Iterable[MessageSource],
        generation: Mapping[str, Any],
        base_dir: Path,
        recipe_file: str = "",
        *,
        images: Sequence[str] = (),
        image_detail: str | None = None,
        examples: Mapping[str, Any] | None = None,
        scope: ReadScope | None = None,
    ) -> None:
        self.scope = scope or ReadScope((base_dir.resolve(),))
        self.env = env = make_environment(base_dir, self.scope)
        self.base_dir = base_dir
        self._needed: set[str] = set()
        self._recipe_file = recipe_file
        # (role, template) or (role, [("text", template, None) | ("image", template, detail)])
        self._messages: list[tuple[str, Any]] = []
        for i, (role, content) in enumerate(list(messages)):
            where = f"prompt (message {i + 1}, {role})"
            if isinstance(content, str):
                self._messages.append(
                    (role, self._renderer(self._compile(content, where), content))
                )
                continue
            parts: list[tuple[str, Any, Any]] = []
            for part in content:
                if part.get("type") == "image":
                    tpl = self._compile(str(part["source"]), where)
                    parts.append(("image", tpl, part.get("detail")))
                else:
                    text = str(part.get("text", ""))
                    parts.append(("text", self._renderer(self._compile(text, where), text), None))
            self._messages.append((role, parts))
        self._shots = [] if examples is None else self._examples(examples)
        self._images = [self._compile(src, "prompt.images") for src in images]
        self._detail = image_detail
        self.variables = frozenset(self._needed - ALWAYS_DEFINED - set(env.globals))
        self._generation = dict(generation)

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> PromptTemplate:
        """The recipe's prompt whole (messages, few-shot examples, images), as a run renders
        it: validate and plan render the same prompts the run sends."""
        if recipe.request_prompt:  # each record is its own request: nothing to render
            from .request_prompt import RequestPrompt

            return RequestPrompt(recipe.generation)  # type: ignore[return-value]
        return cls._of(recipe, recipe)

    @classmethod
    def for_step(cls, recipe: Recipe, step: StepSpec) -> PromptTemplate:
        """A step's prompt (``steps:``): its templates also see ``steps``, the earlier steps."""
        template = cls._of(recipe, step)
        template.variables = template.variables - {"steps"}  # given by the run, not the record
        return template

    @classmethod
    def _of(cls, recipe: Recipe, prompt: Recipe | StepSpec) -> PromptTemplate:
        """The recipe's or a step's prompt (both hold messages, generation, images, examples)."""
        return cls(
            prompt.messages,
            prompt.generation,
            recipe.base_dir,
            str(recipe.path),
            images=prompt.images,
            image_detail=prompt.image_detail,
            examples=prompt.examples,
            scope=recipe.access.scope(recipe.base_dir),
        )

    def condition(self, source: str) -> Callable[[Mapping[str, Any]], Any]:
        """A step's ``when``: a Jinja expression, compiled in this template's sandbox."""
        expression = self.env.compile_expression(source)
        return lambda context: expression(**context)

    def _renderer(self, template: jinja2.Template, source: str) -> _Render:
        """How to render ``template`` for a record: once and for all when it has no Jinja
        syntax at all, else straight through its render function (the record's context is
        built once, with the globals, instead of copied twice by ``Template.render``): about
        half the cost per record, measured in benchmarks/."""
        if "{" not in source and self.env.line_statement_prefix is None:
            return _Render(None, template.render())
        return _Render(template, None, _plain_parts(self.env.parse(source)))

    def _compile(self, source: str, where: str) -> jinja2.Template:
        try:
            ast = self.env.parse(source)
            self._needed |= jinja2.meta.find_undeclared_variables(ast)
            return self.env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise RecipeError(
                [
                    Problem(
                        f"template syntax error (template line {exc.lineno}): {exc.message}",
                        where,
                        self._recipe_file,
                    )
                ]
            ) from None

    def _examples(self, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Few-shot turns: a user and an assistant message per example of the file, rendered
        once with the example's fields (they do not depend on the record)."""
        name = str(spec["path"])
        problem = Problem("", "prompt.examples", self._recipe_file)
        try:
            shots = read_data_file(self.scope.check(name, "prompt.examples.path"))
        except OutsideError as exc:
            raise RecipeError([replace(problem, message=str(exc))]) from None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RecipeError([replace(problem, message=f"cannot read {name}: {exc}")]) from None
        if not isinstance(shots, list) or not all(isinstance(x, Mapping) for x in shots):
            raise RecipeError([replace(problem, message=f"{name}: expected a list of objects")])
        env = make_environment(self.base_dir, self.scope)
        turns: list[dict[str, Any]] = []
        for i, shot in enumerate(shots):
            for role in ("user", "assistant"):
                try:
                    text = env.from_string(str(spec[role])).render({**shot, "example": shot})
                except jinja2.TemplateError as exc:
                    message = f"{name}, example {i + 1}: {role} template: {exc}"
                    raise RecipeError([replace(problem, message=message)]) from None
                turns.append({"role": role, "content": text})
        return turns

    def missing(self, record: Mapping[str, Any]) -> list[str]:
        """The template's variables this record lacks (some may be guarded by ``is defined``
        or ``| default``: only a failed render says the record cannot be used)."""
        return sorted(v for v in self.variables if v not in record)

    def render(self, record_id: str, record: Mapping[str, Any]) -> Prompt:
        """The rendered prompt; TemplateError when the record cannot fill the template,
        ImageError when an attached local image does not exist."""
        context = {**self.env.globals, **record, "record": record}
        try:
            rendered = [
                {"role": role, "content": self._content(content, context)}
                for role, content in self._messages
            ]
            extra = [
                self._image_part(source, self._detail)
                for tpl in self._images
                for source in _sources(tpl.render(context))
            ]
        except RecordError:
            raise
        except jinja2.UndefinedError as exc:
            missing = self.missing(record)
            if missing:
                raise TemplateError(
                    f"record lacks field(s) the prompt uses: {', '.join(missing)}; "
                    f"it has: {', '.join(sorted(map(str, record))) or 'no fields'}"
                ) from None
            raise TemplateError(f"prompt template: {exc.message}") from None
        except Exception as exc:  # a filter or expression failed on this record's values
            raise TemplateError(f"prompt template failed: {type(exc).__name__}: {exc}") from None
        if self._shots:
            last = max((i for i, m in enumerate(rendered) if m["role"] == "user"), default=0)
            rendered[last:last] = [dict(turn) for turn in self._shots]
        if extra:
            _attach(rendered, extra)
        return Prompt(record_id, rendered, self._generation)

    def _content(self, content: Any, context: dict[str, Any]) -> str | list[dict[str, Any]]:
        if isinstance(content, _Render):
            return content(context)
        parts: list[dict[str, Any]] = []
        for kind, tpl, detail in content:
            if kind == "text":
                parts.append({"type": "text", "text": tpl(context)})
            else:
                parts.extend(
                    self._image_part(source, detail) for source in _sources(tpl.render(context))
                )
        return parts

    def _image_part(self, source: str, detail: str | None) -> dict[str, Any]:
        """A neutral image part; a local file is resolved against the recipe's folder, must lie
        in a folder the recipe may read (the path may come from the record's data) and must
        exist now, so the error row names this record rather than a failure at send time."""
        if not source.startswith(URL_PREFIXES):
            try:
                path = self.scope.check(source, "image")
            except OutsideError as exc:
                raise ImageError(str(exc)) from None
            if not path.is_file():
                raise ImageError(f"image {source!r} not found ({path})")
            source = str(path)
        return {"type": "image", "source": source, "detail": detail}

    def field_report(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        """A warning when some of these records cannot fill the prompt for lack of variables
        (None when all can): which variables, how many records, and the fields they do have."""
        seen: set[str] = set()
        lacking: dict[str, int] = {}
        total = 0
        for record in records:
            total += 1
            seen.update(map(str, record))
            try:  # a variable guarded by `| default` or `is defined` is not lacking
                self.render("", record)
            except TemplateError:
                for name in self.missing(record):
                    lacking[name] = lacking.get(name, 0) + 1
            except RecordError:
                pass  # an image: that record's own error row says which
        if not lacking:
            return None
        uses = ", ".join(f"{name} ({n} of {total})" for name, n in sorted(lacking.items()))
        return (
            f"the prompt uses fields that the first {total} record(s) lack: {uses}; "
            f"fields they have: {', '.join(sorted(seen)) or 'none'}"
        )


def _plain_parts(ast: jinja2.nodes.Template) -> tuple[tuple[str, bool], ...] | None:
    """A template made of text and plain ``{{ name }}`` alone, as (literal text, False) and
    (variable name, True) parts; None when it uses anything else (a filter, an attribute, a
    statement, a literal expression), which Jinja then renders. The text is the parser's, so
    whitespace control and newline handling are already applied."""
    parts: list[tuple[str, bool]] = []
    for node in ast.body:
        if type(node) is not jinja2.nodes.Output:
            return None
        for child in node.nodes:
            if type(child) is jinja2.nodes.TemplateData:
                parts.append((child.data, False))
            elif (
                type(child) is jinja2.nodes.Name
                and child.ctx == "load"
                and child.name not in _JINJA_NAMES
            ):
                parts.append((child.name, True))
            else:
                return None
    return tuple(parts)


def _sources(rendered: str) -> list[str]:
    """Image sources in a rendered value: one per line, blank lines ignored."""
    return [line.strip() for line in rendered.splitlines() if line.strip()]


def _attach(messages: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    """Add image parts to the last user message (a new one when there is none)."""
    for message in reversed(messages):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}] if content else []
            message["content"] = [*content, *images]
            return
    messages.append({"role": "user", "content": images})
