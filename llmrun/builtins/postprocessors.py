"""Built-in postprocessors: each turns ``result.text`` into cleaner text and/or ``result.fields``.

A postprocessor rejects a reply by raising ``PostprocessError``; those with a ``reask`` option
also give ``feedback``, which the engine sends back to the model as a follow-up turn.
"""

from __future__ import annotations

import importlib
import re
import string
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jsonschema

from llmrun import (
    ComponentContext,
    PostprocessError,
    RecipeError,
    RecordError,
    Register,
    Result,
    hookimpl,
    thaw,
)

from .jsontext import find_json, read_schema, schema_path

REASK: Mapping[str, Any] = {
    "type": "integer",
    "minimum": 0,
    "default": 0,
    "description": "Follow-up turns that tell the model what was wrong (each is a paid call).",
}
TARGET: Mapping[str, Any] = {
    "type": "string",
    "minLength": 1,
    "description": "Put the value under this field (default: merge an object into the fields).",
}


def _text(result: Result) -> str:
    return result.text if result.text is not None else ""


class Strip:
    """Trim whitespace (and optionally given characters) around the reply's text."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "chars": {"type": "string", "description": "Characters to trim instead of whitespace."}
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.chars = options.get("chars")

    def __call__(self, result: Result) -> None:
        if result.text is not None:
            result.text = result.text.strip(self.chars)


class DropThink:
    """Remove reasoning blocks: ``<think>…</think>``, a leading block whose opening tag the
    server left out (``…</think>answer``), and an unclosed one (the reply ran out inside it)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "tag": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$", "default": "think"}
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        tag = str(options.get("tag", "think"))
        self.open_tag, self.close_tag = f"<{tag}>", f"</{tag}>"
        self.closed = re.compile(rf"{re.escape(self.open_tag)}.*?{re.escape(self.close_tag)}", re.S)

    def __call__(self, result: Result) -> None:
        if result.text is None:
            return
        text = result.text
        close = text.find(self.close_tag)
        if close >= 0 and not 0 <= text.find(self.open_tag) < close:
            text = text[close + len(self.close_tag) :]  # the opening tag was left out
        text = self.closed.sub("", text)
        opened = text.find(self.open_tag)
        if opened >= 0:  # never closed: the reply ran out while thinking
            text = text[:opened]
        result.text = text.strip()


class ExtractJson:
    """Parse the JSON in the reply (the whole text, a fenced block, or the first object or
    array) into the fields: an object is merged, or any value is put under ``target``."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"target": TARGET, "reask": REASK},
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.target: str | None = options.get("target")
        self.reask = int(options.get("reask", 0))

    def __call__(self, result: Result) -> None:
        put_json(result, parse_json(result), self.target)


def parse_json(result: Result) -> Any:
    """The reply's JSON value: ``reply.parsed`` when the provider parsed it, else from the text."""
    if result.reply.parsed is not None and result.text == result.reply.text:
        return result.reply.parsed
    found, value = find_json(_text(result))
    if not found:
        raise PostprocessError(
            "no JSON found in the reply",
            feedback="Your reply contained no JSON. Reply again with only the JSON value.",
        )
    return value


def put_json(result: Result, value: Any, target: str | None) -> None:
    if target is not None:
        result.fields[target] = value
    elif isinstance(value, dict):
        result.fields.update(value)
    else:
        raise PostprocessError(
            f"the reply's JSON is {type(value).__name__}, not an object "
            "(set `target:` to keep it under a field)",
            feedback="Your reply must be a single JSON object. Reply again with only that.",
        )


class JsonSchema:
    """Validate JSON against a schema (inline, or a file relative to the recipe). It checks
    ``result.fields`` (or the ``target`` field) when an earlier step filled them; otherwise it
    parses the reply's JSON itself and puts it there."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "oneOf": [{"required": ["schema"]}, {"required": ["schema_file"]}],
        "properties": {
            "schema": {"type": "object", "description": "The JSON Schema, inline."},
            "schema_file": {"type": "string", "description": "A JSON Schema file (JSON or YAML)."},
            "target": TARGET,
            "reask": REASK,
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        if "schema_file" in options:
            who = "postprocess json_schema.schema_file"
            schema = read_schema(schema_path(context, str(options["schema_file"]), who), who)
        else:
            schema = thaw(options["schema"])
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise RecipeError(f"postprocess json_schema: invalid schema: {exc.message}") from None
        self.validator = cls(schema)
        self.target: str | None = options.get("target")
        self.reask = int(options.get("reask", 0))

    def __call__(self, result: Result) -> None:
        if self.target is not None and self.target in result.fields:
            value = result.fields[self.target]
        elif self.target is None and result.fields:
            value = result.fields
        else:
            value = parse_json(result)
            put_json(result, value, self.target)
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is None:
            return
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        problem = f"{where}: {error.message}"
        raise PostprocessError(
            f"the reply does not match the schema: {problem}",
            feedback=(
                f"Your JSON does not match the required schema: {problem}. "
                "Reply again with only the corrected JSON."
            ),
        )


class Regex:
    """Search the text with a regular expression; its named groups become fields."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["pattern"],
        "properties": {
            "pattern": {"type": "string", "description": "Python regex with (?P<name>...) groups."},
            "ignore_case": {"type": "boolean", "default": False},
            "dotall": {"type": "boolean", "default": False},
            "on_no_match": {"enum": ["error", "skip"], "default": "error"},
            "text": {
                "type": "string",
                "description": "Replace the text with this group (name or number).",
            },
            "reask": REASK,
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        flags = (re.I if options.get("ignore_case") else 0) | (re.S if options.get("dotall") else 0)
        try:
            self.pattern = re.compile(str(options["pattern"]), flags)
        except re.error as exc:
            raise RecipeError(f"postprocess regex: bad pattern: {exc}") from None
        self.skip = options.get("on_no_match") == "skip"
        text = options.get("text")
        self.text: str | int | None = int(text) if text is not None and text.isdigit() else text
        self.reask = int(options.get("reask", 0))

    def __call__(self, result: Result) -> None:
        match = self.pattern.search(_text(result))
        if match is None:
            if self.skip:
                return
            raise PostprocessError(
                f"the reply does not match /{self.pattern.pattern}/",
                feedback="Your reply is not in the required format. Answer again in that format.",
            )
        result.fields.update(match.groupdict())
        if self.text is not None:
            result.text = match.group(self.text)


class Choices:
    """Map the reply to one of the allowed labels: an exact match (ignoring case, spaces and
    surrounding punctuation), an alias, or the one label named in the text."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["labels"],
        "properties": {
            "labels": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "aliases": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Other words for a label: {alias: label}.",
            },
            "field": {"type": "string", "default": "label"},
            "search": {
                "type": "boolean",
                "default": True,
                "description": "Accept a longer reply naming exactly one label (or alias).",
            },
            "reask": REASK,
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.labels = [str(label) for label in options["labels"]]
        self.lookup = {_norm(label): label for label in self.labels}
        for alias, label in (options.get("aliases") or {}).items():
            if label not in self.labels:
                raise RecipeError(
                    f"postprocess choices: alias {alias!r} maps to {label!r}, "
                    f"which is not one of the labels {self.labels}"
                )
            self.lookup[_norm(alias)] = label
        self.field = str(options.get("field", "label"))
        self.search = bool(options.get("search", True))
        self.reask = int(options.get("reask", 0))
        words = sorted(self.lookup, key=len, reverse=True)
        self.finder = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")

    def __call__(self, result: Result) -> None:
        text = _norm(_text(result))
        label = self.lookup.get(text)
        if label is None and self.search:
            named = {self.lookup[m] for m in self.finder.findall(text)}
            if len(named) == 1:
                label = named.pop()
        if label is None:
            allowed = ", ".join(self.labels)
            raise PostprocessError(
                f"the reply {_text(result)[:80]!r} is none of the labels: {allowed}",
                feedback=f"Answer with exactly one of: {allowed}.",
            )
        result.fields[self.field] = label
        result.text = label


def _norm(text: str) -> str:
    return " ".join(text.strip().strip(string.punctuation + " \n\t").lower().split())


class Python:
    """Call ``module:function`` with the ``Result``; the module may sit beside the recipe.

    The function changes the result in place or returns a dict (merged into the fields) or a
    string (the new text). It rejects a reply by raising ``PostprocessError`` (or ValueError).
    """

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["function"],
        "properties": {
            "function": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$"},
            "reask": REASK,
        },
    }

    @classmethod
    def runs_code(cls, options: Mapping[str, Any]) -> str:
        """What this component would run: built only when the user trusts the recipe."""
        module = str(options.get("function", "")).partition(":")[0]
        return f"python function {options.get('function')} (module {module!r})"

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        self.name = str(options["function"])
        self.function = _import(self.name, context.base_dir)
        self.reask = int(options.get("reask", 0))

    def __call__(self, result: Result) -> None:
        try:
            out = self.function(result)
        except RecordError:
            raise
        except ValueError as exc:
            raise PostprocessError(f"{self.name}: {exc}", feedback=str(exc)) from None
        if isinstance(out, dict):
            result.fields.update(out)
        elif isinstance(out, str):
            result.text = out
        elif out is not None:
            raise PostprocessError(
                f"{self.name} returned {type(out).__name__}; expected None, a dict or a string"
            )


def _import(target: str, base_dir: Path) -> Callable[[Result], Any]:
    module_name, _, attr = target.partition(":")
    folder = str(base_dir)
    if folder not in sys.path:  # a helper module kept beside the recipe
        sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(
            f"postprocess python: cannot load {target!r}: {type(exc).__name__}: {exc} "
            f"(looked in {folder} and the installed packages)"
        ) from None
    if not callable(obj):
        raise RecipeError(f"postprocess python: {target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class Fields:
    """Choose and rename the output fields: ``keep`` (names, or {new: old}), ``drop``, and
    ``text`` (copy the text into a field)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "keep": {
                "oneOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "object", "additionalProperties": {"type": "string"}},
                ],
                "description": "Fields to keep (others go), or {new_name: old_name}.",
            },
            "drop": {"type": "array", "items": {"type": "string"}},
            "text": {"type": "string", "description": "Copy the text into this field."},
            "missing": {"enum": ["error", "null"], "default": "error"},
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        keep = options.get("keep")
        if keep is None:
            self.keep: dict[str, str] | None = None
        elif isinstance(keep, Mapping):
            self.keep = {str(k): str(v) for k, v in keep.items()}
        else:
            self.keep = {str(k): str(k) for k in keep}
        self.drop = [str(d) for d in options.get("drop") or ()]
        self.text: str | None = options.get("text")
        self.missing_ok = options.get("missing") == "null"

    def __call__(self, result: Result) -> None:
        fields = result.fields
        if self.text is not None:
            fields[self.text] = result.text
        if self.keep is not None:
            absent = [old for old in self.keep.values() if old not in fields]
            if absent and not self.missing_ok:
                raise PostprocessError(
                    f"no field {', '.join(map(repr, absent))} "
                    f"(fields: {', '.join(fields) or 'none'})"
                )
            fields = {new: fields.get(old) for new, old in self.keep.items()}
        for name in self.drop:
            fields.pop(name, None)
        result.fields = fields


@hookimpl
def register_postprocessors(register: Register) -> None:
    register("strip", Strip)
    register("drop_think", DropThink)
    register("extract_json", ExtractJson)
    register("json_schema", JsonSchema)
    register("regex", Regex)
    register("choices", Choices)
    register("python", Python)
    register("fields", Fields)
