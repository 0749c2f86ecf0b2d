"""`agentstack api --workers 2`: two worker processes on one port. A run whose worker is killed with SIGKILL
completes once on a worker still standing, the dead one is replaced, and a stop leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from agentstack._net import free_port
from agentstack.testing import OtlpReceiver
from cli_helpers import assert_quiet, clean_env, wait_until_answering

# `second` hangs in the first attempt of a run asked to hang: the test kills the process it hangs in.
AGENT = """
    import operator
    import os
    import time
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph

    MARKS = os.environ["MARKS"]


    class State(TypedDict):
        hang: bool
        steps: Annotated[list[str], operator.add]


    def mark(step, state):
        with open(MARKS, "a") as f:
            f.write(f"{step} {'hang' if state['hang'] else 'quick'} {os.getpid()}\\n")


    def first(state):
        mark("first", state)
        return {"steps": ["first"]}


    def second(state):
        with open(MARKS) as f:
            again = f"second {'hang' if state['hang'] else 'quick'}" in f.read()
        mark("second", state)
        if state["hang"] and not again:
            time.sleep(3600)
        return {"steps": ["second"]}


    graph = StateGraph(State)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    graph = graph.compile()
"""


def marks_of(path: Path, step: str) -> list[int]:
    """The pids that marked `step`, in order."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(line.split()[2]) for line in lines if line.startswith(step)]


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """Where the workers send their traces (a run taken over keeps its trace)."""
    with OtlpReceiver() as receiving:
        yield receiving


@pytest.mark.slow  # a supervisor and its worker processes, one of them killed and replaced
def test_a_run_whose_worker_process_is_killed_completes_once_on_another(
    tmp_path: Path, agentstack_postgres: str, receiver: OtlpReceiver
) -> None:
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT))
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"steps": "./agent.py:graph"}}))
    marks = tmp_path / "marks"
    env = clean_env() | {
        "AGENTSTACK_OTLP_ENDPOINT": receiver.url,
        "AGENTSTACK_HOME": str(tmp_path / "home"),
        "AGENTSTACK_POSTGRES_URL": agentstack_postgres,
        "AGENTSTACK_API_LEASE_S": "2",
        "MARKS": str(marks),
        "COLUMNS": "200",
    }
    port = free_port()
    command = [sys.executable, "-m", "agentstack.cli", "api", "--port", str(port), "--config", str(config)]
    server = subprocess.Popen(
        [*command, "--workers", "2", "--jobs", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(server, f"{url}/ok", timeout=60)
        client = get_sync_client(url=url)
        hanging = client.threads.create()["thread_id"]
        doomed = client.runs.create(hanging, "steps", input={"hang": True, "steps": []})
        wait_for(lambda: marks_of(marks, "second hang"), "the run did not reach its second step")
        victim = marks_of(marks, "second hang")[0]
        assert victim != server.pid
        # one run at a time per worker: while that one hangs, the other worker runs this one
        quick = client.threads.create()["thread_id"]
        assert client.runs.wait(quick, "steps", input={"hang": False, "steps": []})["steps"] == ["first", "second"]
        assert marks_of(marks, "second quick") != [victim]

        os.kill(victim, signal.SIGKILL)
        client = get_sync_client(url=url)  # the kept-alive connection to the killed worker died with it
        values = client.runs.join(hanging, doomed["run_id"])
        assert values["steps"] == ["first", "second"]
        assert client.runs.get(hanging, doomed["run_id"])["status"] == "success"
        parts = list(client.runs.join_stream(hanging, doomed["run_id"], last_event_id="0"))
        assert [p.data["attempt"] for p in parts if p.event == "metadata"] == [1, 2]
        assert [p.id for p in parts] == [str(i) for i in range(1, len(parts) + 1)]  # one stream, no gap
        assert len(marks_of(marks, "first hang")) == 1  # saved before the kill: it did not run again
        assert marks_of(marks, "second hang")[1] != victim
        # the dead worker was replaced: two runs at once still run side by side
        wait_for(lambda: len(_workers(server.pid)) == 2, "the killed worker was not replaced", timeout=30)
        workers = _workers(server.pid)
        assert victim not in workers
        # every worker reports the sum of all of them (the killed one's counts included): whichever answers
        for _ in range(6):
            with httpx.Client(base_url=url) as fresh:  # a new connection: it may reach either worker
                text = fresh.get("/metrics").text
            assert 'agentstack_runs_started_total{graph="steps"} 3.0' in text, text  # 2 attempts, 1 quick run
            assert 'agentstack_runs_ended_total{graph="steps",outcome="success"} 2.0' in text, text
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=90)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    spans = receiver.wait_for(lambda got: any(s.attributes.get("agentstack.attempt") == 2 for s in got))
    taken_over = [s for s in spans if s.trace_id == uuid.UUID(doomed["run_id"]).hex and s.name == "invoke_agent steps"]
    assert [s.attributes["agentstack.attempt"] for s in taken_over] == [2]  # the killed worker's queue died with it
    assert {s.resource["service.name"] for s in spans} == {"agentstack-api"}
    assert server.returncode == 0, out + err
    assert "agent server: steps at" in out and "in each of 2 worker processes" in out, out
    assert f"(pid {victim}) ended (signal 9); starting another" in out + err
    assert "agent server: stopped" in out
    assert not [pid for pid in workers if _alive(pid)]  # no worker outlived the server
    assert_quiet(err)


def _workers(pid: int) -> set[int]:
    """The worker processes `pid` has alive now (its children running `api-worker`)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if parent == pid and b"api-worker" in cmdline:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
