"""The numbers in a server's rate-limit headers (``x-ratelimit-*``, Anthropic's under the same
names once the provider maps them): what the key pool reads to pause or pace a key."""

from __future__ import annotations

import math

# The longest wait llmrun takes from a server (Retry-After, a ratelimit reset): a per-minute
# budget refills within it. A hostile or broken server's "inf", 1e12 or a date in the next
# century held a record, or a whole key, for ever; past this a retry asks again, and
# run.max_retries bounds how often.
MAX_SERVER_WAIT_S = 120.0


def bounded_wait(seconds: float | None) -> float | None:
    """A wait a server asked for, as llmrun honours it: within [0, MAX_SERVER_WAIT_S]; None
    for none, or for a value that is no number (nan)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_SERVER_WAIT_S)


def header_number(value: str | None) -> float | None:
    """A rate-limit header's number (``x-ratelimit-remaining-requests: 59``), None if none."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def reset_seconds(value: str | None) -> float | None:
    """Seconds in a reset header (``1.5``, ``6m0s``, ``20ms``, ``1h2m3.5s``), bounded as every
    wait a server asks for is (``bounded_wait``)."""
    return bounded_wait(_reset_seconds(value))


def _reset_seconds(value: str | None) -> float | None:
    """``reset_seconds`` before the bound."""
    if not value:
        return None
    plain = header_number(value)
    if plain is not None:
        return plain
    total, number = 0.0, ""
    text = value.strip()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        i += len(unit)
        try:
            amount = float(number)
        except ValueError:
            return None
        number = ""
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
        if scale is None:
            return None
        total += amount * scale
    return total if not number else None
