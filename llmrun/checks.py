"""Checks of a recipe against its data, without calling anything (``llmrun validate``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .engine import build_component, record_id
from .errors import Problem
from .plugins import Registry
from .recipe import Recipe
from .templates import PromptTemplate
from .values import ComponentContext


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
    template = PromptTemplate(recipe.messages, recipe.generation, recipe.base_dir, str(recipe.path))
    context = ComponentContext(recipe.base_dir, recipe.name, report.notes.append)
    try:
        loader = build_component(registry, "loader", recipe.data, context)
        records = list(itertools.islice(loader.records(), sample))
    except OSError as exc:
        report.problems.append(Problem(f"cannot read the data: {exc}", "data", str(recipe.path)))
        return report
    report.sampled = len(records)
    if not records:
        report.notes.append("the data has no records")
    fields: set[str] = set()
    lacking: dict[tuple[str, ...], list[str]] = {}
    for rec in records:
        if rec.data is None:
            report.problems.append(Problem(rec.error or "unreadable record", "data", rec.where))
            continue
        fields.update(map(str, rec.data))
        if recipe.id_field and record_id(rec.data, recipe.id_field) is None:
            report.problems.append(
                Problem(f"record has no {recipe.id_field!r} field", "data.id", rec.where)
            )
        missing = template.missing(rec.data)
        if missing:
            lacking.setdefault(tuple(missing), []).append(rec.where)
    for names, places in lacking.items():
        shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
        report.problems.append(
            Problem(
                f"the prompt uses {', '.join(names)}, which {len(places)} of {report.sampled} "
                f"record(s) lack ({shown}); fields seen: {', '.join(sorted(fields))}",
                "prompt",
                str(recipe.path),
            )
        )
    used = sorted(template.variables)
    report.notes.append(
        f"prompt variables: {', '.join(used) or 'none'}; "
        f"fields seen in {report.sampled} record(s): "
        f"{', '.join(sorted(fields)) or 'none'}"
    )
    return report
