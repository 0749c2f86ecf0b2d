"""`agentstack serve` as a user runs it: a subprocess, a gateway on a port, SIGTERM to stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cli_helpers import serve_gateway
from fleet_helpers import MODEL, alive, tiny_spec_file

pytestmark = [pytest.mark.slow, pytest.mark.allow_model_requests]  # the fleet's canary asks a real model


def test_serve_runs_a_gateway_and_stops_cleanly(fleet_home: Path, tmp_path: Path, agentstack_postgres: str) -> None:
    spec = tiny_spec_file(tmp_path / "fleet.yaml", replicas=1)
    with serve_gateway(spec, home=fleet_home, postgres_url=agentstack_postgres) as (proc, port):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200 and reply.json()["choices"]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopped" in output
    pid = re.search(rf"{MODEL}/0\D+?llamacpp\D+?(\d+)", output)  # the final status table's pid column
    assert pid is not None, output
    assert not alive(int(pid.group(1)))


def test_serve_refuses_a_busy_port(fleet_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "AGENTSTACK_HOME": str(fleet_home)}
        agentstack = Path(sys.executable).with_name("agentstack")
        result = subprocess.run(
            [str(agentstack), "serve", "--port", str(port)], env=env, capture_output=True, text=True
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "fix:" in result.stderr
