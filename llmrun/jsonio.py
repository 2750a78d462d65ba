"""JSON on the hot path: request bodies, replies and output rows, through orjson.

The stdlib ``json`` module was a fifth of llmrun's CPU per request on realistic rows (issue 14:
encoding the request body and the row); orjson does the same work in a fraction of the time.
The meaning of what is read and written does not change, only the whitespace (orjson writes no
space after ``:`` and ``,``): whatever orjson cannot handle exactly as ``json`` does goes
through ``json`` itself, value by value:

- a string holding a lone surrogate (from ``"\\ud800"`` in the input): written as the JSON
  escape it came from (``json`` with ``backslashreplace``), never an error;
- integers past 64 bits, dict keys that are not strings, ``NaN``/``Infinity`` in a document
  being read: read and written by ``json``, as before;
- one change: a float ``NaN``/``Infinity`` in a row (an input record may hold one) is written
  as ``null``, valid JSON, where ``json`` wrote the non-standard ``NaN`` (looking for them in
  every row would cost more than the whole encoding);
- dates, dataclasses and subclasses of str/int/dict/list in a row: ``str()`` of the value, as
  ``json.dumps(default=str)`` gives (orjson would format them its own way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

_ROW_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_APPEND_NEWLINE
)


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON (a request body)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge int, a non-str key
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")


def row_line(row: Mapping[str, Any]) -> bytes:
    """One output row as a JSON line (with its newline); a value JSON cannot hold is ``str()``."""
    try:
        return orjson.dumps(row, default=str, option=_ROW_OPTIONS)
    except TypeError:
        text = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        return text.encode("utf-8", "backslashreplace")


def loads(data: bytes | str) -> Any:
    """A JSON document; ``ValueError`` (``json.JSONDecodeError`` or orjson's) when it is not."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # NaN, huge ints: what json reads, read as json reads it
        return json.loads(data)
