"""`agentstack ingest`/`search` as a user runs them, settings-driven setup, and the framework adapters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from langchain_core.documents import Document as LangChainDocument

from agentstack._net import free_port
from agentstack.config import Settings
from agentstack.errors import ConfigError, UserError
from agentstack.rag import (
    CohereReranker,
    HttpReranker,
    LangChainRetriever,
    llama_index_retriever,
    open_retrieval,
    retrieval_tool,
)
from agentstack.rag._setup import reranker_from
from cli_helpers import run_agentstack
from rag_server import serve


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_agentstack(*args, env={"AGENTSTACK_HOME": str(home), **(env or {})}, timeout=300)


@pytest.mark.slow
def test_cli_ingest_then_search(tmp_path: Path) -> None:
    """Through an embeddings server (AGENTSTACK_EMBEDDING_BASE_URL), as teams with a GPU embedder run it.

    Each CLI process then starts in seconds (no torch); the CLI on the local embedder is tested by `run --docs`
    (test_run_cli.py) and `ingest --graph` below.
    """
    from agentstack.rag import LocalEmbedder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "resume.md").write_text("# Resuming\n\nA thread resumes from its last Postgres checkpoint after a crash.")
    (docs / "fleet.txt").write_text("The fleet restarts a crashed llama.cpp replica with exponential backoff.")
    home = tmp_path / "home"
    port = free_port()
    with serve(LocalEmbedder(), port) as seen:
        scratch = tmp_path / "tmp"  # where Milvus Lite puts its socket
        scratch.mkdir()
        served = {"AGENTSTACK_EMBEDDING_BASE_URL": f"http://127.0.0.1:{port}/v1", "TMPDIR": str(scratch)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return _cli(home, *args, env=served)

        first = cli("ingest", str(docs))
        assert first.returncode == 0, first.stderr
        assert "2 new, 0 changed, 0 unchanged" in first.stdout and (home / "milvus.db").exists()
        again = cli("ingest", str(docs))
        assert "0 new, 0 changed, 2 unchanged" in again.stdout and "0 chunks embedded" in again.stdout
        found = cli("search", "replica restart backoff", "-k", "1")
        assert found.returncode == 0, found.stderr
        # the CLI ends without the interpreter's teardown (cli._app._exit_now): Milvus Lite's server is still
        # stopped as its finaliser would, its socket and lock file removed
        assert not list(scratch.glob("*.sock")) and not (home / ".milvus.db.lock").exists()
        assert "fleet.txt" in found.stdout and "resume.md" not in found.stdout
        assert "no reranker configured" in found.stdout and "bm25 #1" in found.stdout and "dense #1" in found.stdout
        filtered = cli("search", "crash", "--filter", "file_type=md")
        assert "resume.md" in filtered.stdout and "fleet.txt" not in filtered.stdout
        (tmp_path / "empty.md").write_text("")
        bad = cli("ingest", str(tmp_path / "empty.md"))
        assert bad.returncode == 1 and "empty.md is empty" in bad.stderr and "fix:" in bad.stderr
        bad_filter = cli("search", "crash", "--filter", "nokey")
        assert bad_filter.returncode == 1 and "not key=value" in bad_filter.stderr
    assert seen and all(request["path"] == "/v1/embeddings" for request in seen)


def test_reranker_choice_follows_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*os.environ]:
        if name.startswith("AGENTSTACK_") or name == "COHERE_API_KEY":
            monkeypatch.delenv(name)
    assert reranker_from(Settings.load(home=tmp_path)) is None
    monkeypatch.setenv("AGENTSTACK_RERANK_URL", "http://127.0.0.1:9/v1")
    assert isinstance(reranker_from(Settings.load(home=tmp_path)), HttpReranker)
    monkeypatch.setenv("COHERE_API_KEY", "co-key")  # held for some other tool: documents stay here
    assert isinstance(reranker_from(Settings.load(home=tmp_path)), HttpReranker)
    monkeypatch.delenv("AGENTSTACK_RERANK_URL")
    assert reranker_from(Settings.load(home=tmp_path)) is None
    monkeypatch.setenv("AGENTSTACK_RERANKER", "cohere")
    assert isinstance(reranker_from(Settings.load(home=tmp_path)), CohereReranker)
    monkeypatch.delenv("COHERE_API_KEY")
    with pytest.raises(ConfigError, match="reranker=cohere needs Cohere's key"):
        Settings.load(home=tmp_path)
    monkeypatch.setenv("AGENTSTACK_RERANKER", "http")
    with pytest.raises(ConfigError, match="reranker=http needs AGENTSTACK_RERANK_URL"):
        Settings.load(home=tmp_path)
    monkeypatch.setenv("AGENTSTACK_RERANKER", "none")
    monkeypatch.setenv("AGENTSTACK_RERANK_URL", "http://127.0.0.1:9/v1")
    assert reranker_from(Settings.load(home=tmp_path)) is None


@pytest.mark.slow
async def test_adapters_over_settings_built_retrieval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*os.environ]:
        if name.startswith("AGENTSTACK_") or name == "COHERE_API_KEY":
            monkeypatch.delenv(name)
    (tmp_path / "a.md").write_text("Milvus Lite keeps its data in a local milvus.db directory.")
    (tmp_path / "b.md").write_text("LangGraph interrupts pause a graph until a human approves the tool call.")
    from agentstack.rag import LocalEmbedder

    embedder = LocalEmbedder()
    port = free_port()
    settings = Settings.load(home=tmp_path / "home", rerank_url=f"http://127.0.0.1:{port}", rerank_model="minilm")
    with serve(embedder, port) as seen:
        async with open_retrieval(settings, embedder=embedder) as retrieval:
            await retrieval.ingestor.aingest_paths([tmp_path / "a.md", tmp_path / "b.md"])
            lc = LangChainRetriever(retriever=retrieval.retriever, k=1)
            docs = await lc.ainvoke("human approval of tool calls")
            assert isinstance(docs[0], LangChainDocument) and "interrupts" in docs[0].page_content
            assert docs[0].metadata["rerank_score"] is not None and docs[0].metadata["legs"]
            with pytest.raises(UserError, match="ainvoke"):
                lc.invoke("sync is refused")
            nodes = await llama_index_retriever(retrieval.retriever, k=1).aretrieve("where is the milvus data?")
            assert "milvus.db" in nodes[0].node.get_content() and nodes[0].score is not None
            tool = retrieval_tool(retrieval.retriever, k=1)
            message = await tool.ainvoke(
                {"type": "tool_call", "id": "call-1", "name": tool.name, "args": {"query": "local milvus directory"}}
            )
            chunk = message.artifact[0].chunk
            assert f"[{chunk.id}]" in message.content and "milvus.db" in message.content
        assert seen and all(s["path"] == "/v1/rerank" for s in seen)


@pytest.mark.slow
def test_cli_graph_ingest_with_the_local_model_then_graph_search(tmp_path: Path, fleet_home: Path) -> None:
    """`ingest --graph` starts the CPU fleet, extracts with Gemma 270M into a local FalkorDB; `search --graph`
    shows paths with their source files."""
    from fleet_helpers import tiny_spec_file

    spec = tiny_spec_file(tmp_path / "fleet.yaml", replicas=1)
    (tmp_path / "acme.md").write_text(
        "Alice Smith founded Acme Corporation in Berlin. Acme Corporation builds rockets."
    )
    home = tmp_path / "home"
    models = fleet_home / "models"
    (home / "models").parent.mkdir(parents=True, exist_ok=True)
    if models.is_dir():  # reuse the session's assembled GGUF instead of assembling it again
        (home / "models").symlink_to(models)
    env_fleet = {"AGENTSTACK_FLEET": str(spec)}
    try:
        ingested = _cli(home, "ingest", "--graph", str(tmp_path / "acme.md"), env=env_fleet)
        assert ingested.returncode == 0, ingested.stderr + ingested.stdout
        assert "1 new" in ingested.stdout and "the graph" in ingested.stdout
        found = _cli(home, "search", "What did Alice Smith found?", "--graph", env=env_fleet)
        assert found.returncode == 0, found.stderr
        assert "graph paths from alice smith" in found.stdout.lower()  # Gemma named her; linking found her
        assert "acme.md" in found.stdout
    finally:
        from agentstack.rag._falkordb_server import LocalFalkorDB

        LocalFalkorDB(home).stop()


@pytest.mark.slow
def test_cli_graph_ingest_extracts_with_the_external_model_when_one_is_set(tmp_path: Path) -> None:
    """With AGENTSTACK_LLM_BASE_URL, `ingest --graph` uses that server (here: refused, no model name) and
    starts no fleet."""
    (tmp_path / "a.md").write_text("Alice founded Acme.")
    env = {"AGENTSTACK_LLM_BASE_URL": "http://127.0.0.1:9/v1", "AGENTSTACK_FLEET": str(tmp_path / "no-such.yaml")}
    result = _cli(tmp_path / "home", "ingest", "--graph", str(tmp_path / "a.md"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs both AGENTSTACK_LLM_BASE_URL and AGENTSTACK_LLM_MODEL" in result.stderr
