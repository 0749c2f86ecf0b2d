"""Router overhead: the same requests sent direct to a llama-server replica and through the router.

One replica, one request at a time, direct and routed alternating so drift hits both alike.
The request is a 1-token chat completion with a cached prompt: the cheapest real request, so the
router's share is as visible as it can be. Added latency = routed percentile - direct percentile.
A third side routes through a router that traces (a `route` span for each request, exported by OTLP/HTTP to a
receiver in another process, and the `traceparent` passed on): `p99_added_ms_traced`, target < 1 too.

A percentile of ~90 ms requests to a real model server moves by milliseconds run to run on a shared machine, more
than the router adds, so each request's own router time is measured too, paired: the time in the router's
`handle_async_request` less the time in the transport under it (the upstream request), for the same request:
`p99_router_self_ms` and `p99_router_self_ms_traced` (the reply's body is read after: the router's per-chunk
bookkeeping, and the route span's end when the body closes, are not in it). Ends with one JSON line; target:
p99_added_ms < 1.

    python bench/router_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
from _fleet import MODEL, cpu_fleet, percentile
from _otlp_process import ReceiverProcess, otlp_receiver_process

from agentstack.observability import Tracing
from agentstack.observability._tracing import otlp_exporter
from agentstack.serving import Router
from agentstack.serving._fleet import ROUTED_BASE_URL


class Timed(httpx.AsyncBaseTransport):
    """A transport that records how long each request it passes on took to answer (until its headers)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.ms: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.ms.append((time.perf_counter() - started) * 1000)


def self_times(outer: Timed, inner: Timed) -> list[float]:
    """Each request's time in the router less its upstream time (one request at a time: the lists pair up)."""
    assert len(outer.ms) == len(inner.ms), (len(outer.ms), len(inner.ms))
    return [o - i for o, i in zip(outer.ms, inner.ms, strict=True)]


async def main(requests: int, warmup: int, receiver: ReceiverProcess) -> dict[str, float]:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1, "temperature": 0}
    ).encode()
    headers = {"content-type": "application/json"}
    async with cpu_fleet(replicas=1) as fleet, httpx.AsyncHTTPTransport() as transport:
        base = fleet.replicas[0].base_url
        direct = httpx.AsyncClient(base_url=base, timeout=60)
        tracing = Tracing.create([otlp_exporter(receiver.url)])
        inner: dict[str, Timed] = {"routed": Timed(transport), "traced": Timed(transport)}
        pools = {MODEL: fleet.replicas}  # as the fleet routes: its metrics counted (the streamed timings too)
        outer = {
            "routed": Timed(Router(pools, transport=inner["routed"], metrics=fleet.metrics)),
            "traced": Timed(Router(pools, transport=inner["traced"], metrics=fleet.metrics, tracing=tracing)),
        }
        url = ROUTED_BASE_URL.removesuffix("/v1")
        routed = httpx.AsyncClient(transport=outer["routed"], base_url=url, timeout=60)
        traced = httpx.AsyncClient(transport=outer["traced"], base_url=url, timeout=60)
        timings: dict[str, list[float]] = {"direct": [], "routed": [], "traced": []}

        async def once(name: str, client: httpx.AsyncClient) -> None:
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", content=body, headers=headers)
            response.raise_for_status()
            timings[name].append((time.perf_counter() - started) * 1000)

        sides = [("direct", direct), ("routed", routed), ("traced", traced)]
        for _ in range(warmup):  # warm connections and the prompt cache
            for name, client in sides:
                await once(name, client)
        timings = {"direct": [], "routed": [], "traced": []}
        for timed in (*inner.values(), *outer.values()):
            timed.ms.clear()
        for i in range(requests):
            for name, client in sides[i % 3 :] + sides[: i % 3]:  # each side first in turn
                await once(name, client)
        for client in (direct, routed, traced):
            await client.aclose()
        tracing.close()  # flushes
        spans = receiver.spans()
    result: dict[str, Any] = {}
    own = {side: self_times(outer[side], inner[side]) for side in ("routed", "traced")}
    for q in (50, 99):
        d, r, t = (percentile(timings[side], q) for side in ("direct", "routed", "traced"))
        print(f"p{q}: direct {d:.3f} ms, routed {r:.3f} ms, routed and traced {t:.3f} ms")
        result[f"p{q}_added_ms"] = round(r - d, 3)
        result[f"p{q}_added_ms_traced"] = round(t - d, 3)
    for q in (50, 99):
        r, t = percentile(own["routed"], q), percentile(own["traced"], q)
        print(f"p{q} of each request's own time in the router: {r:.3f} ms, traced {t:.3f} ms")
        result[f"p{q}_router_self_ms"] = round(r, 3)
        result[f"p{q}_router_self_ms_traced"] = round(t, 3)
    print(f"{spans} route spans exported")
    assert spans >= requests, f"the traced side exported {spans} route spans for {requests} requests"
    result["spans_exported"] = spans
    result["requests"] = requests
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="200 requests per side instead of 1000")
    size.add_argument("--smoke", action="store_true", help="5 requests per side: proves it runs, measures nothing")
    args = parser.parse_args()
    requests, warmup = (5, 2) if args.smoke else (200, 20) if args.quick else (1000, 20)
    with otlp_receiver_process() as otlp:
        print(json.dumps(asyncio.run(main(requests, warmup, otlp))))
