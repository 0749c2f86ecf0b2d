"""Running the `agentstack` CLI as a subprocess, isolated from the developer's own settings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agentstack._net import free_port


def clean_env() -> dict[str, str]:
    """This environment without the developer's agentstack settings: no AGENTSTACK_*, and no COHERE_API_KEY,
    which `Settings` reads too (a test's settings are its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTACK_") and k != "COHERE_API_KEY"}


def run_agentstack(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`agentstack ARGS` in `clean_env()` plus `env`."""
    agentstack = Path(sys.executable).with_name("agentstack")
    return subprocess.run(
        [str(agentstack), *args],
        env=clean_env() | {"COLUMNS": "200"} | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_quiet(stderr: str) -> None:
    """Nothing a user should not see: no traceback, no library warning (`UserWarning: ...`)."""
    assert "Traceback" not in stderr, stderr
    assert not re.search(r"\b[A-Z]\w*Warning\b", stderr), stderr


def wait_until_answering(proc: subprocess.Popen[str], url: str, *, timeout: float) -> None:
    """Until `url` answers 200; fails with the process's output if it exits first, or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s"
        time.sleep(0.1)


@contextmanager
def serve_gateway(
    spec: Path, *, home: Path, postgres_url: str, timeout: float = 120
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`agentstack serve SPEC` on a free port until healthy: (the process, its port); killed if still running.
    Its API keys live in the database at `postgres_url` (else it would start an embedded Postgres under `home`,
    which outlives the test)."""
    port = free_port()
    env = clean_env() | {"AGENTSTACK_HOME": str(home), "AGENTSTACK_POSTGRES_URL": postgres_url, "COLUMNS": "160"}
    agentstack = Path(sys.executable).with_name("agentstack")
    proc = subprocess.Popen(
        [str(agentstack), "serve", str(spec), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_answering(proc, f"http://127.0.0.1:{port}/health", timeout=timeout)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
