"""Record ids: what makes resume exact (see docs/output.md, "Ids")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def record_id(data: Mapping[str, Any], id_field: str | None) -> str | None:
    """The record's id: its id field, or a hash of its content (stable across runs)."""
    if id_field is not None:
        value = data.get(id_field)
        return None if value is None or value == "" else str(value)
    canon = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return "h" + hashlib.blake2b(canon.encode(), digest_size=10).hexdigest()
