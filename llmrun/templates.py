"""Prompt templates: Jinja2, strict, with record fields as variables.

Besides each field, a template can use ``record`` (the whole record, for field names that are not
identifiers). A record lacking a variable the template needs is never sent: it becomes an error
row naming the missing fields and the ones the record has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from .errors import Problem, RecipeError, TemplateError
from .values import Prompt

ALWAYS_DEFINED = frozenset({"record"})


def make_environment(base_dir: Path) -> jinja2.Environment:
    """The Jinja2 environment recipes render in: strict, no HTML escaping, includes relative to
    the recipe's folder."""
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=jinja2.FileSystemLoader(str(base_dir)),
    )


class PromptTemplate:
    """The recipe's messages, compiled once, rendered per record."""

    def __init__(
        self,
        messages: Iterable[tuple[str, str]],
        generation: Mapping[str, Any],
        base_dir: Path,
        recipe_file: str = "",
    ) -> None:
        env = make_environment(base_dir)
        self._messages: list[tuple[str, jinja2.Template]] = []
        needed: set[str] = set()
        for i, (role, source) in enumerate(list(messages)):
            try:
                ast = env.parse(source)
                needed |= jinja2.meta.find_undeclared_variables(ast)
                self._messages.append((role, env.from_string(source)))
            except jinja2.TemplateSyntaxError as exc:
                raise RecipeError(
                    [
                        Problem(
                            f"template syntax error (template line {exc.lineno}): {exc.message}",
                            f"prompt (message {i + 1}, {role})",
                            recipe_file,
                        )
                    ]
                ) from None
        self.variables = frozenset(needed - ALWAYS_DEFINED)
        self._generation = dict(generation)

    def missing(self, record: Mapping[str, Any]) -> list[str]:
        """The template's variables this record lacks (some may be guarded by ``is defined``
        or ``| default``: only a failed render says the record cannot be used)."""
        return sorted(v for v in self.variables if v not in record)

    def render(self, record_id: str, record: Mapping[str, Any]) -> Prompt:
        """The rendered prompt; TemplateError when the record cannot fill the template."""
        context = {**record, "record": record}
        try:
            rendered = [
                {"role": role, "content": tpl.render(context)} for role, tpl in self._messages
            ]
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
        return Prompt(record_id, rendered, self._generation)
