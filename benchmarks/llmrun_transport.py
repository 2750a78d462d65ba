"""To split llmrun's cost: llmrun's own provider and transport without the engine.

``concurrency`` workers each build the request with the ``openai`` provider
(``OpenAIChat.build_request``), send it through one of llmrun's transports and parse it with
``OpenAIChat.parse_response``: the per-request work of llmrun minus the engine (streams,
templates, rows, the writer). The gap to raw-aiohttp is the transport and provider; the gap
from here to llmrun is the engine.

``--transport aiohttp`` (default) is the engine's previous route under asyncio
(``AiohttpTransport``, now in benchmarks/aiohttp_transport.py);
``--transport httpx`` is httpx's own transport without the client layer (``HttpxTransport``,
what the engine uses under trio), ``--transport http1`` llmrun's own HTTP/1.1 client
(``Http1Transport``), to compare the routes on the same loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from _common import API_KEY, GENERATION, MODEL, messages, parse_args, records, report
from aiohttp_transport import AiohttpTransport

from llmrun.builtins.openai import OpenAIChat
from llmrun.values import ComponentContext, Prompt
from llmrun.wire.http1 import Http1Transport
from llmrun.wire.transport import HttpxTransport


async def main() -> None:
    args = parse_args(
        __doc__ or "",
        lambda p: p.add_argument(
            "--transport", choices=["aiohttp", "httpx", "http1"], default="aiohttp"
        ),
    )
    provider = OpenAIChat({"model": MODEL, "base_url": args.url}, ComponentContext(Path(), "b"))
    cls = {"aiohttp": AiohttpTransport, "httpx": HttpxTransport, "http1": Http1Transport}[
        args.transport
    ]
    transport = cls(max_connections=args.concurrency, connect_timeout_s=10)
    counter = records(args)
    ok = errors = 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal ok, errors
        for rec in counter:
            if deadline and time.monotonic() > deadline:
                return
            prompt = Prompt(rec["id"], messages(rec), GENERATION)
            try:
                response = await transport.send(provider.build_request(prompt, API_KEY), 120)
                reply = provider.parse_response(response)
            except Exception:
                errors += 1
                continue
            if reply.text:
                ok += 1
            else:
                errors += 1

    started = time.monotonic()
    if args.time_limit:
        deadline = started + args.time_limit
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    await transport.aclose()
    name = {"aiohttp": "aiohttp-transport", "httpx": "httpx-transport", "http1": "http1-transport"}[
        args.transport
    ]
    report(name, ok, errors, elapsed)


if __name__ == "__main__":
    asyncio.run(main())
