"""The numbers in a server's rate-limit headers (``x-ratelimit-*``, Anthropic's under the same
names once the provider maps them): what the key pool reads to pause or pace a key."""

from __future__ import annotations


def header_number(value: str | None) -> float | None:
    """A rate-limit header's number (``x-ratelimit-remaining-requests: 59``), None if none."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def reset_seconds(value: str | None) -> float | None:
    """Seconds in a reset header: ``1.5``, ``6m0s``, ``20ms``, ``1h2m3.5s``."""
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
