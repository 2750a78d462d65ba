"""Record ids: what makes resume exact (see docs/output.md, "Ids")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def record_id(data: Mapping[str, Any], id_field: str | None) -> str | None:
    """The record's id: its id field, or a hash of its content (stable across runs).

    ``id_field`` may be a dotted path into nested objects (``metadata.row_id``; a number steps
    into a list); a key spelled with the dots itself is taken first, so a field named
    ``a.b`` keeps working."""
    if id_field is not None:
        value = _lookup(data, id_field)
        if value is _MISSING or value is None or value == "":
            return None
        return str(value)
    canon = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return "h" + hashlib.blake2b(canon.encode(), digest_size=10).hexdigest()


def missing_id(data: Mapping[str, Any], id_field: str) -> str:
    """Why ``record_id`` found no id, for an error row: which step of the path is missing and
    what is there instead."""
    if "." in id_field and id_field not in data:
        node: Any = data
        walked: list[str] = []
        for part in id_field.split("."):
            nxt = _step(node, part)
            if nxt is _MISSING or nxt is None:
                where = ".".join(walked) or "the record"
                return f"record has no {id_field!r} (data.id): {where} has no {part!r}" + (
                    f"; its fields: {_fields(node)}" if isinstance(node, Mapping) else ""
                )
            walked.append(part)
            node = nxt
        return f"record's {id_field!r} (data.id) is empty"
    return f"record has no {id_field!r} field (data.id); fields: {_fields(data)}"


def _fields(data: Mapping[str, Any]) -> str:
    return ", ".join(sorted(map(str, data))) or "none"


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    value = data.get(path, _MISSING)
    if value is not _MISSING or "." not in path:
        return value
    node: Any = data
    for part in path.split("."):
        node = _step(node, part)
        if node is _MISSING:
            return _MISSING
    return node


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _MISSING
