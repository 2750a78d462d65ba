"""Keeping secrets out of everything llmrun prints or writes, and server text off the terminal.

Three tools, for three kinds of text:
- ``Redactor(secrets)``: the run's known keys (and URL passwords, secret headers) replaced by
  their fingerprint wherever they appear, also cut short: a message cut at 300 characters that
  ends in the first half of a key loses that half too. For everything: rows, messages, hints.
- ``Redactor.message``: the same, plus anything shaped like a credential (``Bearer ...``,
  ``sk-...``, ``x-api-key: ...``, a URL's password) even when it is not one of ours: for error
  messages and anything else a server wrote that is not the reply itself.
- ``printable``: control characters (ESC and the rest) removed, for the terminal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

# A secret's head (or tail) this long, found in a text, starts (or ends) a piece of it: long
# enough that ordinary text, or the prefix all keys of a service share ("sk-proj-"), does not
# match it by chance. Shorter leftovers of a cut key are caught by the credential patterns.
PIECE = 12
_CREDENTIAL = re.compile(
    r"(?i)(?P<lead>\b(?:bearer|basic)\s+)(?!key#)[A-Za-z0-9._~+/=-]+"
    r"|(?P<sk>\b(?:sk|pk|rk)-[A-Za-z0-9_-]{6,})"
    r"|(?P<hlead>\b(?:x-api-key|api-key|x-goog-api-key|authorization|password|secret|token)"
    r"[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?)(?!key#)[^\s\"',;}]+"
    r"|(?P<ulead>://[^/\s:@]+:)[^/\s@]+(?=@)"
)
# C0 controls but tab and newline, DEL, and C1 controls (CSI is one): what moves the cursor,
# clears the screen or changes the title when printed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LOOKS_SECRET = re.compile(r"(?i)^(?:bearer\s+\S{6,}|basic\s+\S{6,}|(?:sk|pk|rk)-\S{6,})$")


def fingerprint(secret: str) -> str:
    """A short, stable name for a key that reveals nothing about it: ``key#1a2b3c4d``."""
    return "key#" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def looks_like_secret(value: str) -> bool:
    """A header value that is a credential whatever its header is called."""
    return bool(_LOOKS_SECRET.match(value.strip()))


def url_password(url: str) -> str | None:
    """The password in ``https://user:password@host/...`` (None when there is none)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def printable(text: str) -> str:
    """``text`` without control characters (tab and newline kept), safe to print."""
    return _CONTROL.sub("", text)


class Redactor:
    """Replaces every known secret in a text, whole or in part."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        # Each secret's names, made once: every string of every row is redacted, and hashing
        # the key for each was most of the cost of making a row (issue 14's profile).
        self._names = [(s, fingerprint(s), fingerprint(s) + "(part)") for s in self._secrets]
        # Whatever of a secret is replaced (whole, a head or tail piece, a cut edge of 4 or
        # more characters) holds its first or last 4: a text with none is left as it is.
        self._edges = tuple({s[:4] for s in self._secrets} | {s[-4:] for s in self._secrets})
        self._clean: str | None = None  # the last string found to hold none of them

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for secret, name, part in self._names:
            if secret in text:
                text = text.replace(secret, name)
            if len(secret) > 2 * PIECE:
                text = _pieces(text, secret, max(PIECE, len(secret) // 4), part)
            text = _cut_edges(text, secret, part)
        return text

    def message(self, text: str) -> str:
        """For text a server or a failure wrote (not a model's reply): known secrets, then
        anything shaped like a credential."""
        return _CREDENTIAL.sub(_mask, self(text))

    def deep(self, value: Any) -> Any:
        """``value`` (JSON-like) with every string redacted; the same object when nothing
        changed, so rows without secrets cost no copies (every row's text, fields and
        response come through here: this is on the hot path)."""
        if not self._secrets:
            return value
        return self._deep(value)

    def _deep(self, value: Any) -> Any:
        if isinstance(value, str):
            if value is self._clean:
                return value  # a row's text is also its response's: searched once
            for edge in self._edges:  # a loop, not any(): no generator per string
                if edge in value:
                    return self(value)
            self._clean = value  # held, so no other string can take its place in memory
            return value
        if isinstance(value, dict):
            out: dict[Any, Any] | None = None
            for k, v in value.items():
                if isinstance(v, (str, dict, list)):
                    new = self._deep(v)
                    if new is not v:
                        if out is None:
                            out = dict(value)
                        out[k] = new
            return value if out is None else out
        if isinstance(value, list):
            items: list[Any] | None = None
            for i, v in enumerate(value):
                if isinstance(v, (str, dict, list)):
                    new = self._deep(v)
                    if new is not v:
                        if items is None:
                            items = list(value)
                        items[i] = new
            return value if items is None else items
        return value


def _pieces(text: str, secret: str, piece: int, mark: str) -> str:
    """Replace what is left of ``secret`` where a text was cut: a run that starts with its
    head or ends with its tail (``piece`` characters), as far as it agrees with the secret,
    by ``mark``."""
    head, tail = secret[:piece], secret[-piece:]
    if head not in text and tail not in text:
        return text
    start = text.find(head)
    while start >= 0:
        end = start + piece
        while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
            end += 1
        text = text[:start] + mark + text[end:]
        start = text.find(head, start + len(mark))
    end = text.find(tail)
    while end >= 0:
        stop = end + piece
        begin = end
        k = len(secret) - piece
        while begin > 0 and k > 0 and text[begin - 1] == secret[k - 1]:
            begin -= 1
            k -= 1
        text = text[:begin] + mark + text[stop:]
        end = text.find(tail, begin + len(mark))
    return text


def _cut_edges(text: str, secret: str, mark: str) -> str:
    """A text cut inside a secret ends with its first characters (or starts with its last):
    any such leftover of 4 characters or more goes, however short (no false match elsewhere,
    as only the very end or start is looked at), replaced by ``mark``."""
    most = min(len(secret) - 1, len(text))
    # An end of n >= 4 characters that is the secret's first n holds its first 4 within the
    # last ``most`` characters: one search rules out every n for nearly every text.
    if most >= 4 and secret[:4] in text[-most:]:
        for n in range(most, 3, -1):
            if text.endswith(secret[:n]):
                text = text[:-n] + mark
                break
    most = min(len(secret) - 1, len(text))
    if most >= 4 and secret[-4:] in text[:most]:
        for n in range(most, 3, -1):
            if text.startswith(secret[-n:]):
                text = mark + text[n:]
                break
    return text


def _mask(match: re.Match[str]) -> str:
    for lead in ("lead", "hlead", "ulead"):
        if match.group(lead):
            return match.group(lead) + "<redacted>"
    return "<redacted>"


def endpoint_name(url: str) -> str:
    """An endpoint as shown: its URL without any user or password in it."""
    parts = urlsplit(url)
    host = parts.hostname or url
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url
