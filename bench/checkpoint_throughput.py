"""Checkpoint throughput: steps/s of a 20-step graph under concurrent threads, per saver.

Savers compared side by side in one run, against the same embedded Postgres:
  none   - no checkpointer (the ceiling)
  memory - LangGraph's InMemorySaver
  stock  - langgraph-checkpoint-postgres's AsyncPostgresSaver on a pool (one global lock)
  pool   - agentstack's PoolSaver (a pooled connection per operation)
each directly (loopback) and through a TCP proxy, in its own process, that delays each
direction by 1 ms: a 2 ms round trip, as to a Postgres on another host, which is where a
global lock hurts. Ends with one JSON line of steps/s per saver and setting, and the ratios
at 50 threads over the 2 ms round trip.

    python bench/checkpoint_throughput.py [--quick | --smoke]

`--smoke` only proves the benchmark runs (one round at 4 threads; its ratios are at 4
threads and mean little); `--quick` is a rough measurement; no flag, the full one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import operator
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

# LangGraph, psycopg and agentstack are imported where used: the delay proxy runs this
# file in its own process and needs none of them (importing them takes seconds).

STEPS = 20
SAVERS = ("none", "memory", "stock", "pool")


@dataclass(frozen=True)
class Mode:
    threads: tuple[int, ...]  # the last one is the headline
    single_rounds: int  # rounds at 1 thread
    rounds: int  # rounds at more threads
    pool_size: int = 20  # connections per saver's pool, unless --pool-size says


MODES = {
    "full": Mode((1, 20, 50), 10, 3),
    "quick": Mode((1, 20, 50), 3, 1),
    "smoke": Mode((4,), 1, 1, pool_size=4),
}


class State(TypedDict):
    step: int
    notes: Annotated[list[str], operator.add]


def build_graph(checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    def work(state: State) -> dict[str, Any]:
        return {"step": state["step"] + 1, "notes": [f"step {state['step']} done"]}

    def more(state: State) -> str:
        return "work" if state["step"] < STEPS else END

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", more, ["work", END])
    return builder.compile(checkpointer=checkpointer)


# -- the delay proxy (runs in its own process: `checkpoint_throughput.py --proxy ...`) ----------
async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    delivery = asyncio.create_task(deliver())
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError):
        await delivery


async def _serve_proxy(listen_port: int, target_port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        for sock in (client_w.get_extra_info("socket"), server_w.get_extra_info("socket")):
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY: we add the latency, Nagle must not
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delay_proxy(target_port: int, one_way_ms: float) -> Any:
    from agentstack._net import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--proxy", str(port), str(target_port), str(one_way_ms / 1000)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.kill()
        proc.wait()


# -- measurement -------------------------------------------------------------------------------
@asynccontextmanager
async def make_saver(kind: str, url: str, pool_size: int) -> AsyncIterator[Any]:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from agentstack.checkpoint import PoolSaver, open_pool

    if kind == "none":
        yield None
    elif kind == "memory":
        yield InMemorySaver()
    else:
        async with open_pool(url, max_size=pool_size, min_size=pool_size) as pool:
            saver = AsyncPostgresSaver(pool) if kind == "stock" else PoolSaver(pool)
            await saver.setup()
            yield saver


async def steps_per_second(graph: Any, threads: int, rounds: int) -> float:
    async def one_thread() -> None:
        config = {"configurable": {"thread_id": str(uuid.uuid4())}}
        result = await graph.ainvoke({"step": 0, "notes": []}, config)
        assert result["step"] == STEPS

    await one_thread()  # warm up connections and code paths
    start = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one_thread() for _ in range(threads)))
    elapsed = time.perf_counter() - start
    return threads * rounds * STEPS / elapsed


async def run(mode: Mode, pool_size: int) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from agentstack.checkpoint import LocalPostgres

    home = Path(tempfile.mkdtemp(prefix="agentstack-bench-"))
    postgres = LocalPostgres(home)
    url = await postgres.astart()
    port = int(conninfo_to_dict(url)["port"])
    results: dict[str, dict[str, float]] = {}
    try:
        with delay_proxy(port, 1.0) as proxy_port:
            settings: dict[str, str] = {"direct": url, "rtt2ms": make_conninfo(url, port=proxy_port)}
            for setting, setting_url in settings.items():
                for kind in SAVERS:
                    async with make_saver(kind, setting_url, pool_size) as saver:
                        graph = build_graph(saver)
                        for threads in mode.threads:
                            if setting == "rtt2ms" and kind in ("none", "memory"):
                                continue  # nothing crosses the network: same as direct
                            rounds = mode.single_rounds if threads == 1 else mode.rounds
                            rate = await steps_per_second(graph, threads, rounds)
                            results.setdefault(f"{setting}/t{threads}", {})[kind] = round(rate, 1)
                            print(f"{setting:>7} {kind:>7} threads={threads:<3} {rate:9.1f} steps/s", flush=True)
    finally:
        await asyncio.to_thread(postgres.destroy)  # a throwaway cluster: leave nothing in /tmp
        shutil.rmtree(home, ignore_errors=True)
    for threads in mode.threads:  # no network involved: the direct figures stand for both settings
        for kind in ("none", "memory"):
            results[f"rtt2ms/t{threads}"][kind] = results[f"direct/t{threads}"][kind]
    return results


def print_table(results: dict[str, dict[str, float]]) -> None:
    print(f"\n{'setting':<14}" + "".join(f"{k:>10}" for k in SAVERS) + f"{'pool/stock':>12}{'pool/none':>11}")
    for key, row in results.items():
        ratios = f"{row['pool'] / row['stock']:>12.2f}{row['pool'] / row['none']:>11.2f}"
        print(f"{key:<14}" + "".join(f"{row[k]:>10.1f}" for k in SAVERS) + ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer rounds: finishes within a minute")
    speed.add_argument("--smoke", action="store_true", help="one tiny round: proves it runs, in seconds")
    parser.add_argument("--pool-size", type=int, help="connections per saver (default 20; 4 with --smoke)")
    parser.add_argument("--proxy", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy:
        listen, target, delay = args.proxy
        asyncio.run(_serve_proxy(int(listen), int(target), float(delay)))
        return
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    results = asyncio.run(run(mode, args.pool_size or mode.pool_size))
    print_table(results)
    headline = results[f"rtt2ms/t{mode.threads[-1]}"]
    summary = {
        "steps_per_s": results,
        "pool_vs_stock": round(headline["pool"] / headline["stock"], 2),
        "pool_vs_none": round(headline["pool"] / headline["none"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
