"""The OpenAI SDK as most people use it: one ``AsyncOpenAI``, one task per record, a
semaphore of ``concurrency`` around ``chat.completions.create``.

The client's connection pool is raised to ``concurrency`` (its default keeps only 100
connections alive) and its retries are off, so it does exactly one call per record.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
from _common import API_KEY, GENERATION, MODEL, messages, parse_args, record, report


async def main() -> None:
    args = parse_args(__doc__ or "")
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    client = openai.AsyncOpenAI(
        base_url=args.url,
        api_key=API_KEY,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )
    sem = asyncio.Semaphore(args.concurrency)
    ok = errors = 0
    deadline = 0.0

    async def one(i: int) -> None:
        nonlocal ok, errors
        async with sem:
            if deadline and time.monotonic() > deadline:
                return
            try:
                completion = await client.chat.completions.create(
                    model=MODEL, messages=messages(record(i)), **GENERATION
                )
            except openai.OpenAIError:
                errors += 1
                return
            if completion.choices[0].message.content:
                ok += 1
            else:
                errors += 1

    started = time.monotonic()
    if args.time_limit:
        deadline = started + args.time_limit
    await asyncio.gather(*(one(i) for i in range(args.records)))
    elapsed = time.monotonic() - started
    await client.close()
    report("openai-sdk", ok, errors, elapsed, openai_version=openai.__version__)


if __name__ == "__main__":
    asyncio.run(main())
