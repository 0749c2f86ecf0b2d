"""Durable execution, shown end to end: a graph is killed with SIGKILL mid-run and resumes.

A worker process runs a six-stage pipeline graph that checkpoints every superstep to the
embedded Postgres (started on first use under ~/.agentstack, or AGENTSTACK_HOME). Once
this script sees, in Postgres, that three stages are committed, it kills the worker with
SIGKILL: no cleanup, no goodbye. It
then resumes the same thread in a new process: the finished stages are not run again,
and the graph completes from where it was.

    python examples/resume_after_kill.py
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from rich.console import Console

from agentstack.checkpoint import open_saver

STAGES = ["fetch", "clean", "chunk", "embed", "index", "report"]
KILL_AFTER = 3  # stages finished before the worker is killed

console = Console()


class PipelineState(TypedDict):
    document: str
    done: Annotated[list[str], operator.add]
    runs: Annotated[list[str], operator.add]  # one entry per stage execution, by process id


def stage(name: str) -> Any:
    async def run(state: PipelineState) -> dict[str, Any]:
        await asyncio.sleep(0.4)  # the work an agent step does (a model call, a search...)
        return {"done": [name], "runs": [f"{name}@{os.getpid()}"]}

    return run


def build_graph(checkpointer: Any) -> Any:
    builder = StateGraph(PipelineState)
    previous = START
    for name in STAGES:
        builder.add_node(name, stage(name))
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=checkpointer)


async def work(thread_id: str, resume: bool) -> dict[str, Any]:
    async with open_saver() as saver:
        graph = build_graph(saver)
        config = {"configurable": {"thread_id": thread_id}}
        payload = None if resume else {"document": "agentstack.md", "done": [], "runs": []}
        return await graph.ainvoke(payload, config, durability="sync")


async def wait_for_checkpoint(thread_id: str, stages: int, worker: subprocess.Popen[str]) -> list[str]:
    """Watch the thread in Postgres (from this process) until `stages` stages are committed."""
    async with open_saver() as saver:
        graph = build_graph(saver)
        config = {"configurable": {"thread_id": thread_id}}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited early with code {worker.returncode}")
            state = await graph.aget_state(config)
            if len(state.values.get("done", [])) >= stages:
                return list(state.values["done"])
            await asyncio.sleep(0.02)
    raise TimeoutError(f"the worker did not checkpoint {stages} stages within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", metavar="THREAD", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = asyncio.run(work(args.worker, args.resume))
        print(f"result {','.join(result['runs'])}", flush=True)
        return 0

    thread_id = f"demo-{uuid.uuid4().hex[:8]}"
    console.print(f"[bold]thread[/] {thread_id}: starting a worker with {len(STAGES)} stages")
    worker = subprocess.Popen([sys.executable, __file__, "--worker", thread_id], stdout=subprocess.PIPE, text=True)
    try:
        saved = asyncio.run(wait_for_checkpoint(thread_id, KILL_AFTER, worker))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    console.print(f"[bold red]killed[/] worker {worker.pid} with SIGKILL; stages checkpointed: {', '.join(saved)}")

    console.print("[bold]resuming[/] the thread in a new process")
    resumed = subprocess.run(
        [sys.executable, __file__, "--worker", thread_id, "--resume"], capture_output=True, text=True, check=True
    )
    runs = next(line for line in resumed.stdout.splitlines() if line.startswith("result ")).split()[1].split(",")
    stages_run = [r.split("@")[0] for r in runs]
    repeated = sorted({s for s in stages_run if stages_run.count(s) > 1})
    pids = sorted({r.split("@")[1] for r in runs})
    console.print(f"stages, in order: {', '.join(runs)} (processes {', '.join(pids)})")
    if stages_run != STAGES or repeated:
        console.print(f"[bold red]FAILED[/]: expected each of {STAGES} once, repeated: {repeated}")
        return 1
    console.print(f"[bold green]resumed[/]: all {len(STAGES)} stages ran exactly once across two processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
