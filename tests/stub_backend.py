"""`StubBackend`: a third-party backend, registered in the tests through a real `agentstack.backends` entry point.

It launches tests/stub_openai_server.py, whose structured-output dialect is `guided_json`, whose metric
names are its own, and which takes only `replicas`, `extra_args` and `env` of the spec's options.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agentstack._net import free_port
from agentstack.serving import (
    Backend,
    LaunchCommand,
    MetricNames,
    ModelSpec,
    Placement,
    Prepared,
    StructuredDialect,
)

SERVER = Path(__file__).with_name("stub_openai_server.py")
GUIDED_JSON = StructuredDialect("guided_json", lambda schema, name: {"guided_json": schema})


class StubBackend(Backend):
    name = "stub"
    takes = frozenset({"replicas", "extra_args", "env"})
    metrics = MetricNames(
        running="stub_requests_running",
        waiting="stub_requests_waiting",
        prompt_tokens="stub_prompt_tokens_total",
        generated_tokens="stub_generated_tokens_total",
    )
    dialect = GUIDED_JSON
    install_hint = "it ships with agentstack's tests"

    @classmethod
    def slots(cls, spec: ModelSpec) -> int:
        return 2

    async def prepare(self, spec: ModelSpec) -> Prepared:
        return Prepared(sys.executable, spec.model)

    def command(
        self, spec: ModelSpec, placement: Placement, prepared: Prepared, *, host: str, port: int
    ) -> LaunchCommand:
        argv = [prepared.program, str(SERVER), "--host", host, "--port", str(port), "--model", spec.name]
        return LaunchCommand(argv + spec.extra_args, self.env(spec, placement))

    def detect(self) -> str | None:
        return f"stub ({SERVER})"


@contextmanager
def stub_server(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """tests/stub_openai_server.py on a free port until healthy: (its process, its base URL); killed at the end."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port), "--model", "stub-chat", *flags])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "the stub server exited"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the stub server never became healthy"
            time.sleep(0.05)
        yield proc, url
    finally:
        proc.kill()
        proc.wait()
