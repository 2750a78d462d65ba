"""Keeping secrets out of everything llmrun prints or writes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def fingerprint(secret: str) -> str:
    """A short, stable name for a key that reveals nothing about it: ``key#1a2b3c4d``."""
    return "key#" + hashlib.sha256(secret.encode()).hexdigest()[:8]


class Redactor:
    """Replaces every known secret in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, fingerprint(secret))
        return text
