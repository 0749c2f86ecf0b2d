"""Running the `agentstack` CLI as a subprocess, isolated from the developer's own settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_agentstack(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`agentstack ARGS` with no AGENTSTACK_*/COHERE_API_KEY from this environment, only `env`'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTACK_") and k != "COHERE_API_KEY"}
    agentstack = Path(sys.executable).with_name("agentstack")
    return subprocess.run(
        [str(agentstack), *args],
        env=clean | {"COLUMNS": "200"} | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
