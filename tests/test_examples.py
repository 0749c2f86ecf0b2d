"""Every example runs, as the README tells users to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentstack.checkpoint import LocalPostgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_resume_after_kill(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTACK_")}
    env["AGENTSTACK_HOME"] = str(tmp_path / "home")
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "resume_after_kill.py")],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "killed" in result.stdout and "ran exactly once across two processes" in result.stdout
    finally:
        LocalPostgres(tmp_path / "home").destroy()
