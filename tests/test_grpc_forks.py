"""A process that talks gRPC (Milvus Lite's client) while it starts programs as another user (the embedded
Postgres, as root) must not fork children that abort: gRPC's fork handlers lose a race against its own busy
threads and the child dies before its exec (seen as `pg_ctl exit -6` in a benchmark of the suite). agentstack
turns them off before gRPC loads (`rag._index._grpc_forks_plainly`); with them on, this loop lost 1 to 7 of 400
spawns, and once hung for two minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
    import asyncio, subprocess, sys

    from agentstack.rag._index import MilvusIndex  # as agentstack opens its index: gRPC loads after it

    async def main():
        index = await MilvusIndex._connect(sys.argv[1], collection="c", token="")
        stop = False

        async def busy():
            while not stop:
                await index._client.has_collection("c")

        calls = [asyncio.create_task(busy()) for _ in range(4)]

        def spawn(times):  # as another user: a real fork, with its handlers, not a vfork
            return sum(subprocess.run(["/bin/true"], user=65534, group=65534, extra_groups=[]).returncode != 0
                       for _ in range(times))

        failed = sum(await asyncio.gather(*(asyncio.wait_for(asyncio.to_thread(spawn, 150), 60) for _ in range(4))))
        stop = True
        await asyncio.gather(*calls)
        await index.aclose()
        print(f"failed {failed}")

    asyncio.run(main())
"""


@pytest.mark.slow  # 600 forks beside a busy gRPC client
@pytest.mark.skipif(os.geteuid() != 0, reason="starting a program as another user needs root (as CI runs)")
def test_programs_started_beside_a_busy_grpc_client_do_not_abort(tmp_path: Path) -> None:
    script = tmp_path / "forks.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "m.db")], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed 0" in done.stdout, done.stdout + done.stderr[-3000:]
