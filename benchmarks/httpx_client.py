"""For reference: plain ``httpx.AsyncClient.post``, ``concurrency`` workers, the pool sized to
``concurrency``. This is what llmrun would cost if it sent its requests through the client."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from _common import API_KEY, body, parse_args, record, report


async def main() -> None:
    args = parse_args(__doc__ or "")
    url = args.url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    counter = iter(range(args.records))
    ok = errors = 0
    deadline = 0.0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok, errors
        for i in counter:
            if deadline and time.monotonic() > deadline:
                return
            data = json.dumps(body(record(i))).encode()
            try:
                resp = await client.post(url, content=data, headers=headers)
                reply = json.loads(resp.content)
            except (httpx.HTTPError, ValueError):
                errors += 1
                continue
            if resp.status_code == 200 and reply["choices"][0]["message"]["content"]:
                ok += 1
            else:
                errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        started = time.monotonic()
        if args.time_limit:
            deadline = started + args.time_limit
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
    report("httpx-client", ok, errors, elapsed, httpx_version=httpx.__version__)


if __name__ == "__main__":
    asyncio.run(main())
