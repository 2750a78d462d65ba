"""Finding JSON in a model's text, and making JSON that fits a JSON Schema (for the mock)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmrun import ComponentContext, OutsideError, RecipeError

_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON)?[ \t]*\n(.*?)```", re.S)
_NOT_FOUND: Any = object()


def find_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` for the JSON in ``text``: the whole text, else a fenced block
    (```json ... ```), else the first object or array that parses; ``(False, None)`` if none."""
    stripped = text.strip()
    try:
        return True, json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return True, json.loads(block.strip())
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return True, value
    return False, None


def schema_path(context: ComponentContext, name: str, who: str) -> Path:
    """A schema file the recipe names, inside the folders it may read; RecipeError else."""
    try:
        return context.readable(name, who)
    except OutsideError as exc:
        raise RecipeError(str(exc)) from None


def read_schema(path: Path, who: str) -> Any:
    """A JSON Schema from a ``.json`` file (else read as YAML); RecipeError naming ``who``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RecipeError(f"{who}: cannot read the schema file {path}: {exc}") from None


def instance_of(schema: Mapping[str, Any], rng: random.Random, name: str = "value") -> Any:
    """A deterministic value valid against ``schema`` (the common keywords: type, properties,
    required, items, enum, const, min/max, anyOf/oneOf/allOf, local $ref)."""
    return _Generator(schema, rng).make(schema, name, 0)


class _Generator:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, Mapping) else {}
            return node if isinstance(node, Mapping) else {}
        return schema

    def make(self, schema: Any, name: str, depth: int) -> Any:
        if not isinstance(schema, Mapping):
            return None if schema is False else "mock"
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.make(schema[key][0], name, depth)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part))
            return self.make(merged, name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else ""
        if kind == "object":
            props = schema.get("properties") or {}
            required = list(schema.get("required") or [])
            names = list(props) + [r for r in required if r not in props]
            if depth > 6:  # a recursive schema: only what is required
                names = required
            return {key: self.make(props.get(key, {}), key, depth + 1) for key in names}
        if kind == "array":
            low = int(schema.get("minItems", 1))
            high = int(schema.get("maxItems", max(low, 2)))
            count = self.rng.randint(low, max(low, min(high, low + 2)))
            items = schema.get("items", {})
            return [self.make(items, name, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
            high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
            if "exclusiveMinimum" in schema and "minimum" not in schema:
                low += 1 if kind == "integer" else 0.5
            if "exclusiveMaximum" in schema and "maximum" not in schema:
                high -= 1 if kind == "integer" else 0.5
            if kind == "integer":
                return self.rng.randint(int(low), max(int(low), int(high)))
            return round(self.rng.uniform(float(low), float(max(low, high))), 3)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        text = f"{name}-{self.rng.randint(0, 999)}"
        pattern = schema.get("pattern")
        if schema.get("format") == "email" or pattern:
            # No general regex inverter: the first of a few common shapes that fits.
            for candidate in (text, f"{name}@example.com", "0", "A", "a"):
                if pattern is None or re.search(str(pattern), candidate):
                    text = candidate
                    break
        low = int(schema.get("minLength", 0))
        text = text.ljust(low, "x")
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
