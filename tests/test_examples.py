"""Every example runs, as its docstring tells users to run it, on the real local stack.

The examples share the session's model gateway (`agentstack serve`, one CPU replica) through
`AGENTSTACK_LLM_BASE_URL`, the setting users point at their own servers, so the fleet starts once
rather than once per example; Postgres, Milvus Lite and the embedder are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentstack.checkpoint import LocalPostgres
from cli_helpers import assert_quiet, clean_env
from fleet_helpers import MODEL
from graph_helpers import DOCS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


@pytest.fixture
def example_env(tmp_path: Path, model_gateway: str, agentstack_postgres: str) -> dict[str, str]:
    """The environment an example runs in: its own home, this test's Postgres, the shared gateway."""
    return clean_env() | {
        "AGENTSTACK_HOME": str(tmp_path / "home"),
        "AGENTSTACK_POSTGRES_URL": agentstack_postgres,
        "AGENTSTACK_LLM_BASE_URL": model_gateway,
        "AGENTSTACK_LLM_MODEL": MODEL,
    }


def run_example(name: str, *args: str, env: dict[str, str], timeout: float = 420) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_quiet(result.stderr)
    return result.stdout


def test_resume_after_kill(tmp_path: Path) -> None:
    env = clean_env() | {"AGENTSTACK_HOME": str(tmp_path / "home")}
    try:
        out = run_example("resume_after_kill.py", env=env, timeout=180)
        assert "killed" in out and "ran exactly once across two processes" in out
    finally:
        LocalPostgres(tmp_path / "home").destroy()


def small_docs(tmp_path: Path) -> Path:
    """A small folder: the examples run the same, with seconds of CPU embedding instead of all of docs/."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    return docs


def test_research_example(example_env: dict[str, str], tmp_path: Path) -> None:
    docs = small_docs(tmp_path)
    out = run_example(
        "research.py", "What restarts a crashed replica?", "--iterations", "1", "--docs", str(docs), env=example_env
    )
    assert "[docs] " in out and "new" in out
    assert "'stage': 'plan'" in out and "done analyze" in out
    assert "answer (" in out and "sources:" in out and "thread: research-" in out


def test_team_example(example_env: dict[str, str], tmp_path: Path) -> None:
    # one worker step: coordinator, worker, synthesizer (each worker round is a research run or a program)
    docs = small_docs(tmp_path)
    out = run_example(
        "team.py", "Use Python to compute 6 times 7", "--max-steps", "1", "--docs", str(docs), env=example_env
    )
    assert "'stage': 'coordinator'" in out
    assert "result (" in out and "thread: team-" in out


def test_approval_example_rejected_refunds_change_nothing(example_env: dict[str, str]) -> None:
    out = run_example("approval.py", "--decide", "reject", env=example_env)
    assert "audit trail:" in out and "thread: approval-" in out
    # whatever the small model asked for, no refund ran without a person approving it
    assert "orders: [(1001, 'delivered'), (1002, 'delivered')]" in out
    assert "refund(" not in out or "reject (refunds need a photo" in out


def test_notebook(example_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    for name in set(os.environ) - set(example_env):
        monkeypatch.delenv(name)
    for name, value in example_env.items():
        monkeypatch.setenv(name, value)  # the kernel process inherits this environment
    notebook = nbformat.read(EXAMPLES / "review_a_research_answer.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=420, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    printed = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    outputs = "\n".join(o.get("text", "") for o in printed)
    assert "edited |" in outputs and "removed: ['S99']" in outputs
    assert "step " in outputs and "'end'" in outputs
    assert_quiet("\n".join(o.get("text", "") for o in printed if o.get("name") == "stderr"))
