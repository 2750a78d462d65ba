"""Checks of a recipe against its data, without calling anything (``llmrun validate``)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import Problem, RecipeError, RecordError, TemplateError
from ..plugins import Registry, build_component
from ..recipe.model import Recipe
from ..recipe.problems import locate
from ..recipe.templates import PromptTemplate
from ..recipe.yamlsource import dotted, load_yaml
from ..values import ComponentContext
from .ids import missing_id, record_id
from .records import selected, selection

SHOWN_IDS = 5  # ids of the first records validate shows


@dataclass
class CheckReport:
    """What ``validate`` found: problems make it fail; notes are for the reader."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sampled: int = 0


def check_against_data(recipe: Recipe, registry: Registry, *, sample: int = 20) -> CheckReport:
    """Render the prompt for the first ``sample`` records: missing variables, missing ids and
    unreadable records are reported with where they are."""
    report = CheckReport()
    template = PromptTemplate.for_recipe(recipe)
    context = ComponentContext(recipe.base_dir, recipe.name, report.notes.append, recipe.access)
    # Built as a run builds them, so what their constructors check (a regex that does not
    # compile, a python: function that does not import, a schema file that is not there) fails
    # validate too, not only the run. Neither calls anything.
    build_component(registry, "provider", recipe.provider, context)
    for spec in recipe.postprocess:
        try:  # code the recipe names is imported only with the user's trust: say what it is
            build_component(registry, "postprocessor", spec, context)
        except RecipeError as exc:
            report.problems.extend(
                Problem(p.message, p.path, str(recipe.path)) for p in exc.problems
            )
    # The records the run would take (filter, shard, offset, limit), but for a sample by count:
    # it reads the whole source, and any records serve to check the prompt.
    if selection(recipe).sample_count is not None:
        report.notes.append("data.sample (a count) is not applied when checking the prompt")
    try:
        loader = build_component(registry, "loader", recipe.data, context)
        works = selected(recipe, loader, whole_sample=False)
        try:
            records = list(itertools.islice(works, sample))
        finally:
            works.close()
    except OSError as exc:
        report.problems.append(Problem(f"cannot read the data: {exc}", "data", str(recipe.path)))
        return report
    except RecipeError:
        raise
    except Exception as exc:  # a plugin's loader that breaks is its fault, told as such
        info = registry.get("loader", recipe.data.name)
        report.problems.append(
            Problem(
                f"loader {info.name!r} ({info.package} {info.version}) failed: "
                f"{type(exc).__name__}: {exc}",
                "data",
                str(recipe.path),
            )
        )
        return report
    report.sampled = len(records)
    if not records:
        report.notes.append("the data has no records")
    fields: set[str] = set()
    lacking: dict[tuple[str, ...], list[str]] = {}
    failing: dict[str, list[str]] = {}
    first_of: dict[str, str] = {}
    readable = 0
    for rec in records:
        if rec.data is None or (rec.error is not None and rec.error.startswith("data.filter")):
            message = rec.error or "unreadable record"
            # Loaders start the message with where the record is; the Problem says it already.
            message = message.removeprefix(f"{rec.where}: ")
            report.problems.append(Problem(message, "data", rec.where))
            continue
        readable += 1
        fields.update(map(str, rec.data))
        if recipe.id_field:
            rid = record_id(rec.data, recipe.id_field)
            if rid is None:
                message = missing_id(rec.data, recipe.id_field).replace(" (data.id)", "")
                report.problems.append(Problem(message, "data.id", rec.where))
            elif rid in first_of:
                # Output rows and resume are keyed on the id: it must name one record only.
                report.problems.append(
                    Problem(
                        f"id {rid!r} is also the id of the record at {first_of[rid]}",
                        "data.id",
                        rec.where,
                    )
                )
            else:
                first_of[rid] = rec.where
        try:
            template.render(rec.id, rec.data)
        except RecordError as exc:
            missing = template.missing(rec.data) if isinstance(exc, TemplateError) else []
            if missing:
                lacking.setdefault(tuple(missing), []).append(rec.where)
            else:
                failing.setdefault(str(exc), []).append(rec.where)
    for names, places in lacking.items():
        at, file, line, column = _prompt_place(recipe, names)
        report.problems.append(
            Problem(
                f"the prompt uses {', '.join(names)}, which {len(places)} of {readable} "
                f"record(s) lack ({_places(places)}); fields seen: {', '.join(sorted(fields))}",
                at,
                file,
                line,
                column,
            )
        )
    for message, places in failing.items():
        report.problems.append(
            Problem(
                f"{message} ({len(places)} of {readable} record(s): {_places(places)})",
                "prompt",
                str(recipe.path),
            )
        )
    ids = [rec.id for rec in records if rec.data is not None][:SHOWN_IDS]
    if ids:
        source = f"data.id {recipe.id_field}" if recipe.id_field else "content hashes: no data.id"
        more = f", ... ({readable} checked)" if readable > len(ids) else ""
        report.notes.append(f"record ids ({source}): {', '.join(ids)}{more}")
    used = sorted(template.variables)
    report.notes.append(
        f"prompt variables: {', '.join(used) or 'none'}; "
        f"fields seen in {readable} record(s): "
        f"{', '.join(sorted(fields)) or 'none'}"
    )
    return report


def _places(places: list[str]) -> str:
    return ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")


def _prompt_place(
    recipe: Recipe, names: tuple[str, ...]
) -> tuple[str, str, int | None, int | None]:
    """(key path, file, line, column) of the prompt text that uses one of ``names``: the
    recipe is read again for positions (a Recipe keeps none); the prompt section itself when
    no single text is found (a name from an included file, an override)."""
    filename = str(recipe.path)
    try:
        data, positions = load_yaml(recipe.path.read_text(encoding="utf-8"), filename)
    except (OSError, UnicodeDecodeError, RecipeError):
        return "prompt", filename, None, None
    used = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
    prompt = data.get("prompt") if isinstance(data, dict) else None
    lines = recipe.path.read_text(encoding="utf-8").splitlines()
    for path, text in _texts(prompt, ("prompt",)):
        found = used.search(text)
        if found:
            file, line, column = locate(path, positions, filename)
            # In a block scalar (`user: |`), the text's own lines follow the key's line.
            if line is not None and _BLOCK.search(lines[line - 1] if line <= len(lines) else ""):
                line, column = line + 1 + text.count("\n", 0, found.start()), None
            return dotted(path), file, line, column
    file, line, column = locate(("prompt",), positions, filename)
    return "prompt", file, line, column


_BLOCK = re.compile(r"[|>][-+0-9]*\s*(#.*)?$")


def _texts(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _texts(item, (*path, i))
