"""The redactor keeps every known secret, whole or cut, out of what it is given."""

from __future__ import annotations

import random

import pytest

from llmrun.redaction import PIECE, Redactor, fingerprint

KEYS = ["sk-proj-0123456789abcdefghijKLMNOPQRSTUV", "hf_abcdEFGH1234", "pass"]


def reference(secrets: list[str], text: str) -> str:
    """The redactor as first written (every position tried, the fingerprint made each time):
    the faster one must give the very same text."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        mark = fingerprint(secret) + "(part)"
        text = text.replace(secret, fingerprint(secret))
        if len(secret) > 2 * PIECE:
            piece = max(PIECE, len(secret) // 4)
            head, tail = secret[:piece], secret[-piece:]
            start = text.find(head)
            while start >= 0:
                end = start + piece
                while (
                    end < len(text)
                    and end - start < len(secret)
                    and text[end] == secret[end - start]
                ):
                    end += 1
                text = text[:start] + mark + text[end:]
                start = text.find(head, start + len(mark))
            end = text.find(tail)
            while end >= 0:
                stop, begin, k = end + piece, end, len(secret) - piece
                while begin > 0 and k > 0 and text[begin - 1] == secret[k - 1]:
                    begin, k = begin - 1, k - 1
                text = text[:begin] + mark + text[stop:]
                end = text.find(tail, begin + len(mark))
        for n in range(min(len(secret) - 1, len(text)), 3, -1):
            if text.endswith(secret[:n]):
                text = text[:-n] + mark
                break
        for n in range(min(len(secret) - 1, len(text)), 3, -1):
            if text.startswith(secret[-n:]):
                text = mark + text[n:]
                break
    return text


def test_a_key_whole_or_cut_at_either_end_is_replaced() -> None:
    redact = Redactor(KEYS)
    key = KEYS[0]
    assert (
        redact(f"Authorization: Bearer {key} sent")
        == f"Authorization: Bearer {fingerprint(key)} sent"
    )
    cut = redact(f"the message was cut at 300 characters: {key[:17]}")
    assert key[:17] not in cut and cut.endswith(fingerprint(key) + "(part)")
    assert (
        redact(f"{key[-9:]} was the start of a page")
        == f"{fingerprint(key)}(part) was the start of a page"
    )
    assert key[:20] not in redact(f"x {key[:20]}y {key[-20:]}")
    assert redact("nothing secret here, sk-other") == "nothing secret here, sk-other"


@pytest.mark.parametrize("seed", range(20))
def test_the_redactor_gives_what_the_first_one_gave(seed: int) -> None:
    rng = random.Random(seed)
    redact = Redactor(KEYS)
    alphabet = "abcdefghijklmnop sk-_0123456789XYZ"
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 4)):
            secret = rng.choice(KEYS)
            i, j = sorted(rng.sample(range(len(secret) + 1), 2))
            filler = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            parts += [filler, secret[i:j] if rng.random() < 0.7 else secret]
        text = "".join(parts)
        assert redact(text) == reference(KEYS, text), text
        assert redact.deep({"k": [text]}) == {"k": [reference(KEYS, text)]}, text


def test_deep_redacts_every_string_and_copies_only_what_changed() -> None:
    redact = Redactor(KEYS)
    key = KEYS[0]
    clean = {"id": "x", "choices": [{"message": {"content": "fine"}}], "n": 3, "f": None}
    assert redact.deep(clean) is clean
    dirty = {"a": {"b": [1, "ok", f"echo {key}"], "c": "same"}, "d": [key[-6:] + " rest"]}
    out = redact.deep(dirty)
    assert out["a"]["b"] == [1, "ok", f"echo {fingerprint(key)}"]
    assert out["d"] == [f"{fingerprint(key)}(part) rest"]
    assert dirty["a"]["b"][2] == f"echo {key}"  # the value given is left as it was
    assert out["a"]["c"] is dirty["a"]["c"]
