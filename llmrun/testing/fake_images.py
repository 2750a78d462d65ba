"""The fake server's ``POST /v1/images/generations``: small real PNGs, made here.

Each image is a valid PNG (a solid colour chosen by a hash of the prompt and the image's
index), so a test can check that what was saved is the image that was sent. ``dall-e-*``
models answer with ``revised_prompt`` and no usage (priced per image); ``gpt-image-*`` with
token usage, as the API does. ``response_format: url`` answers with a URL on this server, which
llmrun must not fetch on its own.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib
from typing import Any

from .http11 import Headers
from .openai_bodies import dumps, error_json

SIZES = frozenset({"256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024"})
MAX_N = 10


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def image_for(prompt: str, index: int) -> bytes:
    """The image the fake makes for ``prompt`` (8x8 pixels, whatever size was asked)."""
    digest = hashlib.sha256(f"{index}:{prompt}".encode()).digest()
    return png(8, 8, (digest[0], digest[1], digest[2]))


def images_answer(body: Any, model: str) -> tuple[int, Headers, bytes]:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return error_json(400, "Missing required parameter: 'prompt'.", param="prompt")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        return error_json(400, f"Invalid 'n': expected 1 to {MAX_N}.", param="n")
    size = body.get("size", "1024x1024")
    if size not in SIZES and size != "auto":
        return error_json(400, f"Invalid 'size': {size!r}.", param="size")
    used = str(body.get("model") or model)
    prompt = body["prompt"]
    data: list[dict[str, Any]] = []
    for i in range(n):
        picture = image_for(prompt, i)
        if body.get("response_format") == "url":
            item: dict[str, Any] = {"url": f"http://127.0.0.1:1/images/{i}.png"}
        else:
            item = {"b64_json": base64.b64encode(picture).decode("ascii")}
        if used.startswith("dall-e-3"):
            item["revised_prompt"] = f"A detailed picture of: {prompt}"
        data.append(item)
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if used.startswith("gpt-image"):
        words = len(prompt.split())
        answer["usage"] = {
            "input_tokens": words,
            "output_tokens": 272 * n,
            "total_tokens": words + 272 * n,
            "input_tokens_details": {"text_tokens": words, "image_tokens": 0},
        }
    return 200, [("content-type", "application/json")], dumps(answer)
