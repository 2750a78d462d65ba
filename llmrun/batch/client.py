"""The HTTP client batch mode hands to a provider's batch API, with the bounds of a call's answer.

A batch API's answers are as untrusted as a call's: a hostile or broken server can announce a
10 GB body, stream one forever or send a small gzip body that inflates to gigabytes. httpx's
client reads whatever comes, so each answer is read here through the same caps as a call's
(``llmrun.wire.bounds``): ``run.max_response_bytes``, or ``run.batch_max_results_bytes`` for a
request marked as a results download (``BATCH_RESULTS``). Past a cap the request ends with
``AnswerTooLarge``, which the runner does not retry (the same answer would come again).
"""

from __future__ import annotations

from typing import Any

import httpx

from ..recipe.model import RunSettings
from ..wire.bounds import DEFAULT_MAX_HEADER_BYTES, AnswerLimits, read_response
from ..wire.transport import read_capped
from .contract import BATCH_RESULTS


class BatchClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose ``send`` returns a response read within its cap. A caller
    that asks for ``stream=True`` reads the body itself, and bounds it itself."""

    def __init__(self, settings: RunSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer_limits = AnswerLimits(DEFAULT_MAX_HEADER_BYTES, settings.max_response_bytes)
        self.results_limits = AnswerLimits(
            DEFAULT_MAX_HEADER_BYTES,
            settings.batch_max_results_bytes,
            "run.batch_max_results_bytes",
        )

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        response = await super().send(request, stream=True, **kwargs)
        if stream:
            return response
        limits = (
            self.results_limits if request.extensions.get(BATCH_RESULTS) else self.answer_limits
        )
        try:
            body = await read_capped(response, limits)
        finally:
            await response.aclose()
        return read_response(response.status_code, response.headers.raw, body, request, limits)
