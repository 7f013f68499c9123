"""The client's side of the retry rule, for Python callers (bench.service and the tests
use it too).

Retry a request that got 500, 502, 503 or 504, or lost its connection, with exponential
backoff and jitter. Every route is safe to retry: tagging has no side effect, and teaching
a place again under its name gets 409 Conflict, never a second place. 500 is on the list
because Ray Serve answers it for a request whose replica died.
"""

from __future__ import annotations

import asyncio
import random

import httpx

RETRY_STATUS = frozenset({500, 502, 503, 504})


async def send(client: httpx.AsyncClient, method: str, url: str, *, tries: int = 6,
               backoff_s: float = 0.2, **request: object) -> httpx.Response:
    """`client.request(method, url, **request)`, retried by the rule above: at most
    `tries` attempts, the n-th retry after about backoff_s * 2**n. Returns the last
    answer; raises the last transport error when no attempt got one."""
    for attempt in range(tries):
        try:
            answer = await client.request(method, url, **request)
            if answer.status_code not in RETRY_STATUS:
                return answer
        except httpx.TransportError:
            if attempt == tries - 1:
                raise
        if attempt < tries - 1:
            await asyncio.sleep(backoff_s * 2**attempt * random.uniform(0.5, 1.0))
    return answer
