"""The baseline: a raw aiohttp loop, ``concurrency`` workers over one session.

Each request: build the body, ``json.dumps`` it, POST it, read the reply and ``json.loads`` it,
take the first choice's text. Nothing else: no retries, no output file. On asyncio's loop, as
such loops are written; ``--uvloop`` runs it on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time

import aiohttp
from _common import API_KEY, body, parse_args, records, report


async def main(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    tls = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    connector = aiohttp.TCPConnector(limit=args.concurrency, ssl=tls if tls else True)
    counter = records(args)
    ok = errors = 0
    deadline = 0.0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, errors
        for rec in counter:
            if deadline and time.monotonic() > deadline:
                return
            data = json.dumps(body(rec)).encode()
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    reply = json.loads(await resp.read())
                    if resp.status == 200 and reply["choices"][0]["message"]["content"]:
                        ok += 1
                    else:
                        errors += 1
            except (aiohttp.ClientError, OSError, ValueError):
                errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        if args.time_limit:
            deadline = started + args.time_limit
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
    report("raw-aiohttp-uvloop" if args.uvloop else "raw-aiohttp", ok, errors, elapsed)


def with_uvloop(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")


if __name__ == "__main__":
    arguments = parse_args(__doc__ or "", with_uvloop)
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
