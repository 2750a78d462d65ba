"""Limits on what a server may send, and the response the transports hand to providers.

Every byte of an answer is untrusted: a server (or anything between it and us) can announce a
10 GB body, stream chunks forever, flood headers or send a small gzip body that inflates to
gigabytes. Each transport counts what it reads against ``AnswerLimits`` and ends the call with
``AnswerTooLarge`` (a record-level error row, never a retry) as soon as a limit is passed, so
memory stays bounded whatever the server does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

# A request extension: bound the wait for each next byte of the answer, not the whole answer (a
# streamed answer that keeps coming is alive); set by a provider for a streamed call.
IDLE_TIMEOUT = "llmrun.idle_timeout"
# A response extension: seconds from sending to the first body bytes, when IDLE_TIMEOUT was set.
FIRST_BYTE = "llmrun.first_byte_s"

MiB = 1024 * 1024

# Generous for any provider API (a chat answer is kilobytes, an embeddings batch a few MB).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * MiB

# A compressed body is inflated this many bytes of input at a time: gzip inflates at most
# ~1,000x and a zstd/brotli block of a few bytes to 128 KiB, so one step stays a few MiB.
_DECODE_STEP = 512


@dataclass(frozen=True)
class AnswerLimits:
    """``max_header_bytes``: the status line and headers, interim (1xx) answers included.
    ``max_response_bytes``: the body as received and again once decoded (gzip, br, zstd)."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    setting: str = "run.max_response_bytes"  # what to raise, named when the body is refused


class AnswerTooLarge(httpx.RemoteProtocolError):
    """The answer passed a limit of ``AnswerLimits``: the call ends, the record gets an error row
    (retrying would only pay for the same oversized answer again)."""


def too_large(what: str, limit: int, setting: str | None = None) -> AnswerTooLarge:
    where = f" ({setting})" if setting else ""
    return AnswerTooLarge(f"{what} from the server: over {_size(limit)}{where}; refused")


def _size(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


class ReadResponse(httpx.Response):
    """An ``httpx.Response`` whose body the transport has already read and decoded, as httpx's
    client returns one after ``aread()``: ``content``, ``text``, ``json()``, ``read()`` and
    ``aread()`` give that body; the headers are exactly what the server sent.

    Built through the public constructor and overriding public members only (``content``,
    ``read``, ``aread``), so no private attribute of httpx is touched; it is also ~6 us cheaper
    than reading a ``ByteStream`` through httpx's decoder chain (benchmarks/README.md)."""

    def __init__(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]] | httpx.Headers,
        body: bytes,
        request: httpx.Request,
    ) -> None:
        super().__init__(status, headers=headers, stream=httpx.ByteStream(body), request=request)
        self._llmrun_body = body
        self.is_stream_consumed = True
        self.is_closed = True

    @property
    def content(self) -> bytes:
        return self._llmrun_body

    def read(self) -> bytes:
        return self._llmrun_body

    async def aread(self) -> bytes:
        return self._llmrun_body


def read_response(
    status: int,
    raw_headers: Sequence[tuple[bytes, bytes]] | httpx.Headers,
    body: bytes,
    request: httpx.Request,
    limits: AnswerLimits,
) -> httpx.Response:
    """The response for a body read off the wire, decoded (gzip, deflate, br, zstd: whatever
    httpx decodes) with the decoded size bounded by ``limits.max_response_bytes``."""
    for name, value in raw_headers.raw if isinstance(raw_headers, httpx.Headers) else raw_headers:
        if len(name) == 16 and name.lower() == b"content-encoding":
            if value.strip().lower() != b"identity":
                body = _decode(status, raw_headers, body, request, limits)
            break
    return ReadResponse(status, raw_headers, body, request)


def _decode(
    status: int,
    raw_headers: Sequence[tuple[bytes, bytes]] | httpx.Headers,
    body: bytes,
    request: httpx.Request,
    limits: AnswerLimits,
) -> bytes:
    """The body through httpx's own decoders (public streaming API), fed a few hundred bytes
    at a time so that a decompression bomb is stopped at the limit, not after inflating."""
    encoded = httpx.Response(status, headers=raw_headers, stream=_Slices(body), request=request)
    parts: list[bytes] = []
    total = 0
    limit = limits.max_response_bytes
    try:
        for part in encoded.iter_bytes():
            total += len(part)
            if total > limit:
                raise too_large("decoded body", limit, limits.setting)
            parts.append(part)
    except httpx.DecodingError as exc:
        raise httpx.RemoteProtocolError(f"cannot decode the answer: {exc}") from exc
    return b"".join(parts)


class _Slices(httpx.SyncByteStream):
    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        body = memoryview(self._body)
        for start in range(0, len(body), _DECODE_STEP):
            yield bytes(body[start : start + _DECODE_STEP])
