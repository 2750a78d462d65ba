"""Images attached to prompts: read and check them once, whatever provider sends them.

A prompt carries images as neutral parts (``{"type": "image", "source": ..., "detail": ...}``,
see ``values.Prompt``); a provider calls ``load_image`` on the source and sends what its API
wants (a URL, a data URL, or base64 with a media type). Problems are ``ImageError``: an error row
for that record, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from .errors import RecordError

MAX_BYTES = 20 * 1024 * 1024  # OpenAI's and Anthropic's per-image ceiling is around 20 MB
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


class ImageError(RecordError):
    """An image that cannot be read, is not an image, or is too large."""

    code = "image"


@dataclass(frozen=True, slots=True)
class Image:
    """An image ready to send: bytes with their media type, or a URL the provider fetches."""

    media_type: str | None
    data: bytes | None = None
    url: str | None = None

    def b64(self) -> str:
        """The bytes in base64 (only for images that are not URLs)."""
        if self.data is None:
            raise ImageError(f"image {self.url} is a URL; this provider needs the bytes")
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """A ``data:`` URL, or the http(s) URL as given."""
        if self.url is not None:
            return self.url
        return f"data:{self.media_type};base64,{self.b64()}"


def load_image(source: str, *, max_bytes: int = MAX_BYTES) -> Image:
    """An ``Image`` from a local path, an http(s) URL (not fetched) or a ``data:`` URL."""
    source = source.strip()
    if source.startswith(("http://", "https://")):
        return Image(media_type=mimetypes.guess_type(source.split("?", 1)[0])[0], url=source)
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        media_type = header[5:].split(";", 1)[0] or None
        if ";base64" not in header:
            raise ImageError("a data: URL image must be base64 (data:image/png;base64,...)")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("the data: URL image is not valid base64") from None
        return _checked(Image(media_type, data), "the data: URL image", max_bytes)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"image {source} is {size:,} bytes, over the {max_bytes:,} limit")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {source}: {exc.strerror or exc}") from None
    return _checked(Image(sniff(data) or mimetypes.guess_type(source)[0], data), source, max_bytes)


def sniff(data: bytes) -> str | None:
    """The media type the bytes' signature shows, if it is one providers accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _checked(image: Image, what: str, max_bytes: int) -> Image:
    assert image.data is not None
    if len(image.data) > max_bytes:
        raise ImageError(f"{what} is {len(image.data):,} bytes, over the {max_bytes:,} limit")
    found = sniff(image.data)
    if found is None:
        raise ImageError(f"{what} is not a PNG, JPEG, GIF or WebP image")
    return Image(found, image.data)
