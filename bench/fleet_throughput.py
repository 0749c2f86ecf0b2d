"""Fleet throughput: generated tokens/s through the router versus direct to the same server.

One llama-server replica; batches of concurrent chat completions sent either straight to its
port or through the fleet's router, alternating batch by batch so drift hits both alike.
Ends with one JSON line; target: fleet_over_direct >= 0.95.

    python bench/fleet_throughput.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
from _fleet import MODEL, cpu_fleet


async def batch(client: httpx.AsyncClient, concurrency: int, round_: int, max_tokens: int) -> int:
    async def one(i: int) -> int:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"List facts about the number {round_ * 100 + i}:"}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": i,
        }
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    return sum(await asyncio.gather(*(one(i) for i in range(concurrency))))


async def main(rounds: int, concurrency: int, max_tokens: int = 64) -> dict[str, float]:
    async with cpu_fleet(replicas=1, parallel=concurrency) as fleet:
        clients = {
            "direct": httpx.AsyncClient(base_url=fleet.replicas[0].base_url, timeout=300),
            "fleet": fleet.http_client(timeout=300),
        }
        tokens = {name: 0 for name in clients}
        seconds = {name: 0.0 for name in clients}
        await batch(clients["direct"], concurrency, -1, max_tokens)  # warm up
        for round_ in range(rounds):
            for name in clients if round_ % 2 == 0 else reversed(list(clients)):
                started = time.perf_counter()
                tokens[name] += await batch(clients[name], concurrency, round_, max_tokens)
                seconds[name] += time.perf_counter() - started
        for client in clients.values():
            await client.aclose()
    rate = {name: tokens[name] / seconds[name] for name in clients}
    print(f"direct {rate['direct']:.1f} tok/s, fleet {rate['fleet']:.1f} tok/s ({concurrency} concurrent)")
    return {
        "fleet_over_direct": round(rate["fleet"] / rate["direct"], 3),
        "direct_tok_s": round(rate["direct"], 1),
        "fleet_tok_s": round(rate["fleet"], 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="4 rounds per side instead of 12")
    size.add_argument("--smoke", action="store_true", help="1 round of 2 short replies: proves it runs")
    args = parser.parse_args()
    rounds, concurrency, max_tokens = (1, 2, 8) if args.smoke else (4, 4, 64) if args.quick else (12, 4, 64)
    print(json.dumps(asyncio.run(main(rounds, concurrency, max_tokens))))
