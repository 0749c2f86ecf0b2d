"""Supervision on real servers: crash under load, restart, startup failure, and no orphans after SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentstack.errors import BackendError
from agentstack.serving import Fleet, ReplicaState
from fleet_helpers import MODEL, alive, tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.allow_model_requests]


async def test_kill_9_one_of_two_replicas_under_load(fleet_home: Path) -> None:
    spec = tiny_spec(fleet={"restart_backoff_s": 0.2})
    async with Fleet(spec, home=fleet_home) as fleet:
        victim = fleet.replicas[0]
        old_pid = victim.pid
        assert old_pid is not None
        llm = fleet.chat_model(MODEL, max_tokens=32, max_retries=0)
        # more requests than the two replicas' 8 slots: the victim is busy when it dies
        requests = [asyncio.create_task(llm.ainvoke(f"Write a list of {i} fruits:")) for i in range(10)]
        while victim.outstanding == 0:  # noqa: ASYNC110 (kill while it is serving)
            await asyncio.sleep(0.01)
        fleet.process_of(victim).kill()
        replies = await asyncio.gather(*requests)  # raises if any request failed
        assert len(replies) == 10
        deadline = time.monotonic() + 60
        while not (victim.state is ReplicaState.READY and victim.restarts == 1):
            assert time.monotonic() < deadline, f"replica did not come back: {victim.state}"
            await asyncio.sleep(0.1)
        assert victim.pid != old_pid and not alive(old_pid)
        metrics = fleet.metrics.render().decode()
        assert f'agentstack_replica_restarts{{model="{MODEL}",replica="0"}} 1.0' in metrics
        assert f'agentstack_failovers_total{{model="{MODEL}"}}' in metrics
        reply = await llm.ainvoke("Say hi.")  # the restarted replica serves again
        assert reply.content is not None


async def test_replica_given_up_after_max_restarts(fleet_home: Path) -> None:
    spec = tiny_spec(replicas=2, fleet={"max_restarts": 0})
    async with Fleet(spec, home=fleet_home) as fleet:
        fleet.process_of(fleet.replicas[1]).kill()
        deadline = time.monotonic() + 30
        while fleet.replicas[1].state is not ReplicaState.FAILED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        reply = await fleet.chat_model(MODEL, max_tokens=4).ainvoke("hi")
        assert reply.content is not None and fleet.replicas[0].served >= 1


async def test_server_dying_at_startup_fails_fast_with_its_log(fleet_home: Path) -> None:
    spec = tiny_spec(replicas=2, extra_args=["--no-such-flag"], startup_timeout_s=300)
    fleet = Fleet(spec, home=fleet_home)
    started = time.monotonic()
    with pytest.raises(BackendError, match="exited with code") as info:
        await fleet.start()
    assert time.monotonic() - started < 30  # did not wait for the 300 s deadline
    assert "--no-such-flag" in str(info.value)  # the server's own last log lines
    assert fleet.replicas == []  # everything started was stopped


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from fleet_helpers import tiny_spec
    from agentstack.serving import Fleet

    async def main():
        fleet = Fleet(tiny_spec(), home=Path({home!r}))
        await fleet.start()
        print(json.dumps([r.pid for r in fleet.replicas]), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_no_server_outlives_a_sigkilled_parent(fleet_home: Path) -> None:
    code = CHILD.format(tests=str(Path(__file__).parent), home=str(fleet_home))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"orphaned servers: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)


async def test_embedding_model_through_the_gateway_path(fleet_home: Path) -> None:
    """An embed-task replica (Gemma's GGUF with mean pooling) passes its canary and answers /v1/embeddings."""
    spec = tiny_spec(replicas=1, task="embed", chat_template=None)
    async with Fleet(spec, home=fleet_home) as fleet, fleet.http_client() as client:
        response = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a cat", "a dog"]})
        assert response.status_code == 200
        vectors = [item["embedding"] for item in response.json()["data"]]
        assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 100
