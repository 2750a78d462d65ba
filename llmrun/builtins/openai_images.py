"""The ``openai-images`` provider: image generation (``POST {base_url}/images/generations``,
DALL-E 2/3 and gpt-image models, or any server with that endpoint).

A record's rendered prompt (its last user message) is the image prompt. The images come back
base64-encoded (asked for explicitly from DALL-E, whose default is a URL that expires within
the hour) and are saved beside the output, in ``<output stem>-images/`` (``folder`` to choose
another, relative to the recipe), each named by a hash of its bytes: a retried or resumed call
never overwrites another record's image, and a record id (which the data controls) never
becomes a path. The row gets the paths in ``text`` and ``response.images`` (with DALL-E 3's
``revised_prompt``); the cost comes from the price table: tokens for gpt-image models, per
image for DALL-E.

What a server sends is untrusted: every image must decode from base64 and be a PNG, JPEG or
WebP (by its bytes, whatever it claims), at most ``MAX_IMAGE_BYTES``; a URL answer (a server
that ignores ``response_format``) is recorded, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from llmrun import (
    CallError,
    ComponentContext,
    Prompt,
    Register,
    Reply,
    Usage,
    hookimpl,
    image_media_type,
)

from .openai_completions import message_text
from .openai_wire import COMMON_OPTIONS, OpenAIShaped

MAX_IMAGE_BYTES = 32 * 1024 * 1024
SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class OpenAIImages(OpenAIShaped):
    """One image-generation request per record; the images saved as files."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "properties": {
            **COMMON_OPTIONS,
            "size": {"type": "string", "description": "e.g. 1024x1024, 1792x1024, auto."},
            "quality": {
                "type": "string",
                "description": "standard/hd (DALL-E 3), low/medium/high.",
            },
            "style": {"enum": ["vivid", "natural"], "description": "DALL-E 3 only."},
            "background": {"enum": ["transparent", "opaque", "auto"]},
            "output_format": {"enum": ["png", "jpeg", "webp"], "description": "gpt-image only."},
            "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "folder": {
                "type": "string",
                "minLength": 1,
                "description": "Where images are saved, relative to the recipe. Default: "
                "beside the output, in <output stem>-images/.",
            },
        },
    }
    path: ClassVar[str] = "/images/generations"
    what: ClassVar[str] = "image generation"
    label: ClassVar[str] = "openai-images"
    supported: ClassVar[frozenset[str]] = frozenset()  # no text generation key applies
    has_batch_api: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        super().__init__(options, context)
        keys = ("size", "quality", "style", "background", "output_format", "n")
        self._params = {k: options[k] for k in keys if options.get(k) is not None}
        if "folder" in options:
            self.folder = (context.base_dir / str(options["folder"])).resolve()
        elif context.output is not None:
            self.folder = context.output.with_name(context.output.stem + "-images")
        else:  # validate and plan save nothing
            self.folder = (context.base_dir / "images").resolve()
        self._base_dir = context.base_dir.resolve()

    def body(self, prompt: Prompt) -> dict[str, Any]:
        users = [m for m in prompt.messages if m.get("role") == "user"] or list(prompt.messages)
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": message_text(users[-1]) if users else "",
            **self._params,
        }
        if self.model.startswith("dall-e"):
            body["response_format"] = "b64_json"  # the default, a URL, expires within the hour
        body.update(self._extra_body)
        return body

    def reply_from_body(self, data: dict[str, Any]) -> Reply:
        items = data["data"]
        if not isinstance(items, list) or not items:
            raise ValueError("no images in the answer")
        images = [self._save(item) for item in items]
        usage = data.get("usage") or {}
        return Reply(
            text=next((i["path"] for i in images if "path" in i), None),
            finish_reason="stop",
            usage=Usage(
                input_tokens=usage.get("input_tokens"),
                output_tokens=usage.get("output_tokens"),
                images=len(images),
            ),
            model=self.model,
            images=images,
            raw={k: v for k, v in data.items() if k != "data"},  # not megabytes of base64
        )

    def _save(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise TypeError("an image entry is not an object")
        out: dict[str, Any] = {}
        if isinstance(item.get("revised_prompt"), str):
            out["revised_prompt"] = item["revised_prompt"]
        encoded = item.get("b64_json")
        if not isinstance(encoded, str):
            if isinstance(item.get("url"), str):
                out["url"] = item["url"]  # recorded, never fetched
                return out
            raise TypeError("an image entry has neither b64_json nor url")
        if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise _refused(f"an image of more than {MAX_IMAGE_BYTES // 2**20} MiB")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _refused("an image that is not base64") from None
        kind = image_media_type(raw)
        if kind not in SUFFIX:
            raise _refused("an image that is not PNG, JPEG or WebP")
        name = hashlib.sha256(raw).hexdigest()[:32] + SUFFIX[kind]
        target = self.folder / name
        if not target.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, target)  # whole or absent, even if the run is killed here
        return {"path": _shown(target, self._base_dir), **out, "bytes": len(raw)}


def _shown(path: Path, base: Path) -> str:
    """The path relative to the recipe's folder when inside it (as the files loader gives)."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _refused(what: str) -> CallError:
    return CallError(f"the server sent {what}", kind="record", code="bad_image")


@hookimpl
def register_providers(register: Register) -> None:
    register("openai-images", OpenAIImages)
