"""Checks of a recipe against its data, without calling anything (``llmrun validate``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..errors import Problem, RecipeError, RecordError, TemplateError
from ..plugins import Registry, build_component
from ..recipe.model import Recipe
from ..recipe.templates import PromptTemplate
from ..values import ComponentContext
from .ids import record_id
from .records import selected, selection


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
                report.problems.append(
                    Problem(f"record has no {recipe.id_field!r} field", "data.id", rec.where)
                )
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
        report.problems.append(
            Problem(
                f"the prompt uses {', '.join(names)}, which {len(places)} of {readable} "
                f"record(s) lack ({_places(places)}); fields seen: {', '.join(sorted(fields))}",
                "prompt",
                str(recipe.path),
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
    used = sorted(template.variables)
    report.notes.append(
        f"prompt variables: {', '.join(used) or 'none'}; "
        f"fields seen in {readable} record(s): "
        f"{', '.join(sorted(fields)) or 'none'}"
    )
    return report


def _places(places: list[str]) -> str:
    return ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
