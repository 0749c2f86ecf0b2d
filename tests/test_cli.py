"""The `agentstack` command line, run as a user would (in-process through typer's runner)."""

from __future__ import annotations

import asyncio
import operator
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langgraph.graph import END, START, StateGraph
from typer.testing import CliRunner

from agentstack.checkpoint import LocalPostgres, open_saver
from agentstack.cli import app
from agentstack.config import Settings

runner = CliRunner()


def test_doctor_passes_here_and_fails_without_postgres(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = runner.invoke(app, ["doctor"])
    assert ok.exit_code == 0, ok.output
    assert "PostgreSQL" in ok.output and "GPUs (NVML)" in ok.output
    monkeypatch.setenv("AGENTSTACK_POSTGRES_BIN_DIR", "/nonexistent")
    broken = runner.invoke(app, ["doctor"])
    assert broken.exit_code == 1
    assert "MISSING" in broken.output and "apt-get install" in broken.output


@pytest.mark.slow
def test_db_lifecycle(settings: Settings) -> None:
    try:
        assert runner.invoke(app, ["db", "status"]).exit_code == 3
        started = runner.invoke(app, ["db", "start"])
        assert started.exit_code == 0 and "running" in started.output
        assert "password" not in started.output and ":" in started.output
        url = runner.invoke(app, ["db", "url"]).output.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        status = runner.invoke(app, ["db", "status"])
        assert status.exit_code == 0 and "running: pid" in status.output
        assert "stopped" in runner.invoke(app, ["db", "stop"]).output
        assert "not running" in runner.invoke(app, ["db", "url"]).output
    finally:
        LocalPostgres.from_settings(settings).destroy()


def test_threads_list_prune_delete(
    agentstack_postgres: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", agentstack_postgres)
    asyncio.run(_make_threads(agentstack_postgres, ["alpha", "beta"], steps=6))

    listed = runner.invoke(app, ["threads", "list"])
    assert listed.exit_code == 0 and "alpha" in listed.output and "beta" in listed.output

    pruned = runner.invoke(app, ["threads", "prune", "alpha", "--keep-last", "2"])
    assert pruned.exit_code == 0, pruned.output
    assert "alpha: deleted 6 checkpoint(s)" in pruned.output and "kept 2" in pruned.output

    assert runner.invoke(app, ["threads", "prune", "--all"]).exit_code == 2  # no rule given
    deleted = runner.invoke(app, ["threads", "delete", "beta", "--yes"])
    assert deleted.exit_code == 0 and "deleted 8 checkpoint(s)" in deleted.output
    after = runner.invoke(app, ["threads", "list"])
    assert "beta" not in after.output and "alpha" in after.output


def test_errors_are_reported_without_a_traceback(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", "postgresql://nobody:secret@127.0.0.1:1/none")
    result = runner.invoke(app, ["threads", "list"])
    assert result.exit_code == 1
    assert "error: Postgres at nobody@127.0.0.1:1/none failed while connecting" in result.output
    assert "fix:" in result.output
    assert "secret" not in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("agentstack")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "doctor" in result.stdout and "threads" in result.stdout


class Counted(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


async def _make_threads(url: str, names: list[str], steps: int) -> None:
    def work(state: Counted) -> dict[str, Any]:
        return {"n": state["n"] + 1, "log": ["x"]}

    builder = StateGraph(Counted)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["n"] < steps else END, ["work", END])
    async with open_saver(url) as saver:
        graph = builder.compile(checkpointer=saver)
        for name in names:
            await graph.ainvoke({"n": 0, "log": []}, {"configurable": {"thread_id": name}})


def test_doctor_says_where_retrieved_passages_go(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentstack.cli._doctor import run_checks

    def reranking() -> str:
        (check,) = [c for c in run_checks(Settings.load()) if c.name == "Reranking"]
        return check.detail

    monkeypatch.setenv("COHERE_API_KEY", "co-key")  # for some other tool
    assert reranking() == "none: the fused order stands; a COHERE_API_KEY is set but not used"
    monkeypatch.setenv("AGENTSTACK_RERANKER", "cohere")
    assert reranking() == "Cohere's API (rerank-v3.5): retrieved passages leave this machine"
    monkeypatch.setenv("AGENTSTACK_RERANKER", "http")
    monkeypatch.setenv("AGENTSTACK_RERANK_URL", "http://127.0.0.1:9/v1")
    assert reranking() == "self-hosted http://127.0.0.1:9/v1 (rerank-v3.5)"
