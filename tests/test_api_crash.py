"""A server process killed with SIGKILL mid-run: another server on the same Postgres finishes the run, from the
checkpoint the run saved (its finished step does not run again), and the client's join sees one whole stream."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from langgraph_sdk import get_sync_client

from agentstack._net import free_port
from cli_helpers import wait_until_answering

SERVER = r"""
import asyncio, operator, os, sys
from typing import Annotated, TypedDict

import uvicorn
from langgraph.graph import END, START, StateGraph

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.checkpoint import open_saver

url, port, marks, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def mark(step: str) -> None:
    with open(marks, "a") as f:
        f.write(step + "\n")


def first(state: State) -> dict:
    mark("first")
    return {"steps": ["first"]}


async def second(state: State) -> dict:
    mark("second")
    await asyncio.sleep(pause)  # the first server is killed here
    return {"steps": ["second"]}


async def main() -> None:
    async with open_saver(url) as saver:
        graph = StateGraph(State)
        graph.add_node("first", first)
        graph.add_node("second", second)
        graph.add_edge(START, "first")
        graph.add_edge("first", "second")
        graph.add_edge("second", END)
        served = ServedGraphs([ServedGraph("steps", graph.compile(checkpointer=saver))])
        app = app_on(RunQueue(saver.conn), served, workers=1, lease_s=1.0)
        await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).serve()


asyncio.run(main())
"""


def start(script: Path, url: str, marks: Path, pause: float) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), url, str(port), str(marks), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(proc, f"{base}/ok", timeout=60)
    return proc, base


def test_a_run_outlives_the_server_killed_under_it(tmp_path: Path, agentstack_postgres: str) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    marks = tmp_path / "marks"
    doomed, first_url = start(script, agentstack_postgres, marks, pause=3600)
    try:
        client = get_sync_client(url=first_url)
        thread = client.threads.create()
        run = client.runs.create(thread["thread_id"], "steps", input={"steps": []})
        deadline = time.monotonic() + 30
        while "second" not in (marks.read_text() if marks.exists() else ""):
            assert time.monotonic() < deadline, "the run did not reach its second step"
            time.sleep(0.05)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
    survivor, second_url = start(script, agentstack_postgres, marks, pause=0)
    try:
        client = get_sync_client(url=second_url)
        assert client.runs.join(thread["thread_id"], run["run_id"]) == {"steps": ["first", "second"]}
        assert client.runs.get(thread["thread_id"], run["run_id"])["status"] == "success"
        parts = list(client.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0"))
        assert [p.data["attempt"] for p in parts if p.event == "metadata"] == [1, 2]
        assert [p.id for p in parts] == [str(i) for i in range(1, len(parts) + 1)]  # one stream, no gap
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.communicate(timeout=30)
    assert marks.read_text().split() == ["first", "second", "second"]  # "first" was saved: it did not run again
