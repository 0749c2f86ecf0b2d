"""Thread affinity versus round-robin on two llama.cpp replicas, with a multi-turn agent workload.

Each thread is an agent loop whose prompt grows turn by turn (a system prompt, a document
chunk per turn, and its own earlier answers), so a replica that served the thread's previous turn
already holds its prefix in llama-server's prompt cache. Both policies go through the same router:
affinity (the default: a thread sticks to its replica) and plain round-robin. Streams measure
time to first token; throughput counts completion tokens over the wall time of the whole workload;
the replicas' own prompt-token counters (scraped by the fleet, `Fleet.scrape_backends`, under each
backend's metric names) count the prompt tokens each policy made the replicas prefill (cache hits
are not prefilled), which is the mechanism behind both figures.

The thread count is odd on purpose: with an even count and two replicas, threads that move in
lockstep make round-robin hand every thread the same replica turn after turn, which is affinity
by accident. Ends with one JSON line; above 1 means affinity wins.

    python bench/affinity.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
from _fleet import MODEL, cpu_fleet

from agentstack.serving import THREAD_HEADER, Fleet, Router

SYSTEM = "You are a research agent. Read each new document, keep notes, answer briefly. " * 4
DOC_WORDS = 250  # a tool result per turn: large next to the answer, as in agent loops
WORDS = ("retrieval", "checkpoint", "replica", "gradient", "protein", "latency", "cache", "graph", "token", "vector")


def document(thread: int, turn: int) -> str:
    words = [WORDS[(thread * 7 + turn * 3 + i) % len(WORDS)] for i in range(DOC_WORDS)]
    return f"Document {turn} of thread {thread}: " + " ".join(words)


async def run_turn(client: httpx.AsyncClient, thread: int, messages: list[dict[str, str]]) -> tuple[float, int, str]:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, tokens, text = None, 0, []
    async with client.stream("POST", "/v1/chat/completions", json=body, headers={THREAD_HEADER: f"t{thread}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    text.append(piece)
    return (ttft if ttft is not None else time.perf_counter() - started), tokens, "".join(text)


async def prefilled_tokens(fleet: Fleet) -> float:
    """Prompt tokens the replicas have actually processed so far (each server's own counter, read by the fleet)."""
    stats = await fleet.scrape_backends()
    assert len(stats) == len(fleet.replicas), "a replica's /metrics did not answer"
    return sum(s.prompt_tokens for s in stats.values())


async def workload(client: httpx.AsyncClient, threads: int, turns: int, session: str) -> tuple[list[float], int, float]:
    ttfts: list[float] = []
    tokens = 0

    async def agent(thread: int) -> None:
        nonlocal tokens
        # A prefix unique to this run: no run may hit prompts that an earlier run left in a cache.
        messages = [{"role": "system", "content": f"Session {session}, agent {thread}. {SYSTEM}"}]
        for turn in range(turns):
            messages.append({"role": "user", "content": document(thread, turn) + "\nNote the key word:"})
            ttft, n, text = await run_turn(client, thread, messages)
            messages.append({"role": "assistant", "content": text})
            ttfts.append(ttft)
            tokens += n

    started = time.perf_counter()
    await asyncio.gather(*(agent(t) for t in range(threads)))
    return ttfts, tokens, time.perf_counter() - started


async def main(threads: int, turns: int, rounds: int) -> dict[str, float]:
    # One core per replica, 4 slots each. Both routers share one pool, which this benchmark owns.
    async with (
        cpu_fleet(replicas=2, threads=1, parallel=4, max_context=4096) as fleet,
        httpx.AsyncHTTPTransport() as transport,
    ):
        pools = {MODEL: fleet.replicas}
        policies = {
            "affinity": Router(pools, transport=transport),
            "rr": Router(pools, transport=transport, affinity=False, balance="round_robin"),
        }
        results: dict[str, dict[str, list[float]]] = {p: {"ttft": [], "tps": [], "prefill": []} for p in policies}
        for round_ in range(rounds):
            order = list(policies) if round_ % 2 == 0 else list(reversed(policies))
            for name in order:
                before = await prefilled_tokens(fleet)
                async with httpx.AsyncClient(transport=policies[name], base_url="http://fleet", timeout=300) as c:
                    ttfts, tokens, wall = await workload(c, threads, turns, f"{name}-{round_}")
                prefill = await prefilled_tokens(fleet) - before
                results[name]["ttft"] += ttfts
                results[name]["tps"].append(tokens / wall)
                results[name]["prefill"].append(prefill)
                print(
                    f"round {round_} {name:8s}: mean TTFT {statistics.mean(ttfts) * 1000:7.1f} ms, "
                    f"{tokens / wall:6.1f} tok/s, {prefill:7.0f} prompt tokens prefilled"
                )
    ttft = {name: statistics.mean(r["ttft"]) for name, r in results.items()}
    tps = {name: statistics.mean(r["tps"]) for name, r in results.items()}
    prefill = {name: sum(r["prefill"]) for name, r in results.items()}
    return {
        "ttft_rr_over_affinity": round(ttft["rr"] / ttft["affinity"], 3),
        "throughput_affinity_over_rr": round(tps["affinity"] / tps["rr"], 3),
        "ttft_affinity_ms": round(ttft["affinity"] * 1000, 1),
        "ttft_rr_ms": round(ttft["rr"] * 1000, 1),
        "prefill_rr_over_affinity": round(prefill["rr"] / max(prefill["affinity"], 1.0), 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5 threads x 5 turns, 1 round per policy")
    size.add_argument("--smoke", action="store_true", help="1 thread x 1 turn: proves it runs, measures nothing")
    args = parser.parse_args()
    shape = (1, 1, 1) if args.smoke else (5, 5, 1) if args.quick else (5, 8, 2)
    print(json.dumps(asyncio.run(main(*shape))))
