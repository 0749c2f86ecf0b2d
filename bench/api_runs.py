"""Agent server throughput: `agentstack api` (runs durable on Postgres) against LangGraph's own in-memory dev
server (`langgraph-api` + `langgraph-runtime-inmem`, what `langgraph dev` runs), side by side in one run.

The same graph (`_api_graph.py`: five supersteps, a scripted chat model, no sleeps) is driven by the same
`langgraph_sdk` client: at 1, 10 and 50 concurrent clients, each creates a thread and `runs.wait`s on it again
and again; completed runs/s, p50/p99 latency. Then time to the first event of `runs.stream`. agentstack runs
with 1 and 2 worker processes (`--workers`, each running `--jobs 4` runs at a time: LangGraph's runs 10 at a
time in its one process) on its embedded Postgres in a throwaway home.

LangGraph's server lives in a venv of its own (not a dependency of ours): `--langgraph-python PATH`, else one
made on first use under ~/.cache/agentstack-bench (pip, a minute). `--smoke` runs one run per client per level
on agentstack alone (LangGraph's keys are null) unless `--langgraph-python` is given: the suite runs it.

Ends with one JSON line: `runs_per_s_vs_langgraph_dev` (agentstack with 2 worker processes over LangGraph's, at 50
clients; target >= 1.0), `p99_ms_agentstack`, `p99_ms_langgraph_dev`, `first_event_ms_agentstack`.

    python bench/api_runs.py [--smoke] [--runs-per-client N] [--langgraph-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from _fleet import percentile
from langgraph_sdk import get_client

from agentstack._net import free_port
from agentstack.checkpoint import LocalPostgres
from agentstack.config import Settings

BENCH = Path(__file__).resolve().parent
GRAPH = BENCH / "_api_graph.py"
LEVELS = (1, 10, 50)
LANGGRAPH = ("langgraph-api==0.16.7", "langgraph-runtime-inmem==0.36.7")  # resolve and serve (2026-11-30)
LANGGRAPH_VENV = Path.home() / ".cache" / "agentstack-bench" / "langgraph-dev"


def langgraph_python(given: str | None, *, smoke: bool) -> Path | None:
    """The Python of a venv with LangGraph's dev server in it: `given`, the cached one, or a new one (none in a
    smoke run, which measures agentstack alone unless given one: the suite runs it, and never pip)."""
    if given:
        return Path(given)
    if smoke:
        return None
    python = LANGGRAPH_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"making a venv for {LANGGRAPH[0]} in {LANGGRAPH_VENV} (once; pip takes a minute)", file=sys.stderr)
    venv.create(LANGGRAPH_VENV, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *LANGGRAPH], check=True)
    return python


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[str]:
    """A server process on a free port, as its URL, once `/ok` answers; stopped with SIGINT afterwards."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command], env=env, cwd=cwd, stdout=out, stderr=out
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def drive(url: str, graph_id: str, runs_per_client: int) -> dict[str, Any]:
    """Each level: clients that each make a thread and wait on runs of it in turn; then first events."""
    result: dict[str, Any] = {}
    client = get_client(url=url, timeout=120)
    for level in LEVELS:
        latencies: list[float] = []

        async def one_client(latencies: list[float] = latencies) -> None:
            thread = await client.threads.create()
            for _ in range(runs_per_client):
                started = time.perf_counter()
                values = await client.runs.wait(thread["thread_id"], graph_id, input={"steps": []})
                latencies.append((time.perf_counter() - started) * 1000)
                assert isinstance(values, dict) and len(values["steps"]) >= 5, values

        await one_client()  # warm: connections, the graph's first run
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(level)))
        elapsed = time.perf_counter() - started
        result[level] = {
            "runs_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        }
    firsts: list[float] = []
    thread = await client.threads.create()
    for _ in range(max(3, runs_per_client)):
        started = time.perf_counter()
        async for _part in client.runs.stream(thread["thread_id"], graph_id, input={"steps": []}):
            firsts.append((time.perf_counter() - started) * 1000)
            break
        await asyncio.sleep(0.3)  # the run we left finishes before the next one starts
    result["first_event_ms"] = percentile(firsts, 50)
    return result


@contextlib.asynccontextmanager
async def throwaway_home() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="agentstack-bench-api-") as home:
        try:
            yield Path(home)
        finally:
            await asyncio.to_thread(LocalPostgres.from_settings(Settings(home=Path(home))).destroy)


async def main(runs_per_client: int, workers: list[int], lg_python: Path | None) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentstack-bench-api-") as work:
        cwd = Path(work)
        config = cwd / "langgraph.json"
        config.write_text(json.dumps({"graphs": {"steps": f"{GRAPH}:graph"}}))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTACK_", "LANGSMITH_", "LANGCHAIN_"))}
        async with throwaway_home() as home:
            env = base | {"AGENTSTACK_HOME": str(home)}
            agentstack = str(Path(sys.executable).with_name("agentstack"))
            for n in workers:
                command = [agentstack, "api", "--config", str(config), "--port", "{port}", "--workers", str(n)]
                with server(command, env, cwd, cwd / f"agentstack-{n}.log") as url:
                    measured[f"agentstack_{n}w"] = await drive(url, "steps", runs_per_client)
        if lg_python is not None:
            launch = (
                "import sys; from langgraph_api.cli import run_server; "
                f"run_server(port=int(sys.argv[1]), graphs={{'steps': '{GRAPH}:graph'}})"
            )
            env = base | {"LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
            with server([str(lg_python), "-c", launch, "{port}"], env, cwd, cwd / "langgraph-dev.log") as url:
                measured["langgraph_dev"] = await drive(url, "steps", runs_per_client)
    return measured


def report(measured: dict[str, Any]) -> dict[str, Any]:
    for name, levels in measured.items():
        for level in LEVELS:
            m = levels[level]
            print(
                f"{name:16} {level:3} clients: {m['runs_per_s']:7.1f} runs/s  p50 {m['p50_ms']:7.1f} ms  "
                f"p99 {m['p99_ms']:7.1f} ms"
            )
        print(f"{name:16} first event of runs.stream: {levels['first_event_ms']:.1f} ms (p50)")
    ours, theirs = measured["agentstack_2w"], measured.get("langgraph_dev")
    return {
        "runs_per_s_vs_langgraph_dev": ours[50]["runs_per_s"] / theirs[50]["runs_per_s"] if theirs else None,
        "runs_per_s_agentstack": ours[50]["runs_per_s"],
        "runs_per_s_agentstack_1w": measured["agentstack_1w"][50]["runs_per_s"],
        "runs_per_s_langgraph_dev": theirs[50]["runs_per_s"] if theirs else None,
        "p99_ms_agentstack": ours[50]["p99_ms"],
        "p99_ms_langgraph_dev": theirs[50]["p99_ms"] if theirs else None,
        "first_event_ms_agentstack": ours["first_event_ms"],
        "first_event_ms_langgraph_dev": theirs["first_event_ms"] if theirs else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one run per client per level, agentstack alone")
    parser.add_argument("--runs-per-client", type=int, default=4)
    parser.add_argument("--langgraph-python", help="a Python with langgraph-api and langgraph-runtime-inmem")
    parser.add_argument("--workers", default="1,2", help="agentstack's worker counts to measure (1 and 2 are needed)")
    args = parser.parse_args()
    lg = langgraph_python(args.langgraph_python, smoke=args.smoke)
    counts = sorted({1, 2, *(int(w) for w in args.workers.split(","))})
    print(json.dumps(report(asyncio.run(main(1 if args.smoke else args.runs_per_client, counts, lg)))))
