"""The recipe JSON Schema: the base shipped in the package, composed with components' schemas."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from ..plugins import Registry

# Keys of each component section that belong to the core, not to the component.
CORE_KEYS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # kind: (recipe section, key naming the component, core keys)
    "loader": (
        "data",
        "loader",
        ("loader", "id", "limit", "offset", "sample", "seed", "filter", "shard"),
    ),
    "provider": ("provider", "name", ("name", "api_keys", "base_urls", "endpoints")),
    "writer": ("output", "writer", ("writer", "include", "raw")),
}


@cache
def _base_text() -> str:
    return resources.files("llmrun").joinpath("schemas/recipe.schema.json").read_text("utf-8")


def base_schema() -> dict[str, Any]:
    """The core schema, with component sections left open (a fresh copy each call)."""
    data: dict[str, Any] = json.loads(_base_text())
    return data


def composed_schema(registry: Registry) -> dict[str, Any]:
    """The full schema for editors: each component's options constrained by its own schema,
    selected with if/then on the component's name."""
    schema = base_schema()
    props = schema["properties"]
    for kind, (section, name_key, core) in CORE_KEYS.items():
        target = props[section]
        names = sorted(registry.components[kind])
        target["properties"][name_key] = {**target["properties"].get(name_key, {}), "enum": names}
        rules = []
        for name in names:
            cls = registry.components[kind][name].cls
            own = copy.deepcopy(getattr(cls, "options_schema", {}) or {})
            own_props = own.get("properties", {})
            then: dict[str, Any] = {
                "properties": {**{k: True for k in core}, **own_props},
            }
            if own.get("required"):
                then["required"] = own["required"]
            if own.get("additionalProperties") is False:
                then["additionalProperties"] = False
            cond = {"properties": {name_key: {"const": name}}, "required": [name_key]}
            rules.append({"if": cond, "then": then})
        if rules:
            target["allOf"] = rules
    post_names = sorted(registry.components["postprocessor"])
    item_props = {
        # `- strip:` (no options) is null in YAML; recipes accept it as no options.
        name: {
            "anyOf": [
                {"type": "null"},
                copy.deepcopy(
                    getattr(registry.components["postprocessor"][name].cls, "options_schema", {})
                    or {}
                ),
            ]
        }
        for name in post_names
    }
    props["postprocess"]["items"] = {
        "oneOf": [
            {"enum": post_names},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": False,
                "properties": item_props,
            },
        ]
    }
    return schema
