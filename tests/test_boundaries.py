"""Every failure of a library underneath reaches the caller as an agentstack error that names the part and a fix.

Each test stops or breaks a real server under a running operation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from agentstack._net import free_port
from agentstack._structured import StructuredCall
from agentstack.errors import BackendError, RetrievalError
from agentstack.prompts import Prompt
from agentstack.rag import HttpReranker, KnowledgeGraph, MilvusIndex, OpenAIEmbedder, open_graph_store
from agentstack.rag._falkordb_server import LocalFalkorDB
from cli_helpers import run_agentstack

PROMPT = Prompt(graph="demo", name="ask", version=1, system="Answer.", user="{{ question }}")
SERVER = Path(__file__).with_name("chat_server.py")


class Answer(BaseModel):
    text: str


@contextmanager
def chat_server(mode: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port), mode], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            time.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait()


def chat_model(base_url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, model="tiny", api_key="none", max_retries=0, timeout=30)  # type: ignore[arg-type]


@pytest.mark.allow_model_requests  # a real ChatOpenAI against a failing server
async def test_a_model_server_killed_mid_request_is_a_backend_error() -> None:
    with chat_server("hang") as (proc, url):
        call = StructuredCall(chat_model(url), Answer)
        asking = asyncio.create_task(call(PROMPT, question="why?"))
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)  # the server has the request
        proc.kill()
        with pytest.raises(BackendError, match=r"demo/ask@v1 \(model 'tiny'\) could not be reached") as caught:
            await asyncio.wait_for(asking, 30)
    assert "agentstack serve" in (caught.value.fix or "")


@pytest.mark.allow_model_requests  # a real ChatOpenAI against a failing server
async def test_a_model_server_that_is_not_running_is_a_backend_error() -> None:
    call = StructuredCall(chat_model(f"http://127.0.0.1:{free_port()}/v1"), Answer)
    with pytest.raises(BackendError, match="could not be reached"):
        await call(PROMPT, question="why?")


@pytest.mark.allow_model_requests  # a real ChatOpenAI against a failing server
async def test_a_model_server_error_reply_is_a_backend_error_with_its_status() -> None:
    with chat_server("error") as (_proc, url):
        call = StructuredCall(chat_model(url), Answer)
        with pytest.raises(BackendError, match=r"HTTP 500: .*out of memory"):
            await call(PROMPT, question="why?")


def children_running(marker: str) -> list[int]:
    """Pids of this process's children whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and marker in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
async def test_milvus_lite_killed_under_searches_is_a_retrieval_error(tmp_path: Path) -> None:
    path = tmp_path / "milvus.db"
    index = await MilvusIndex.open(path, dimension=4, embedder="test")
    try:
        await index.search_dense([1.0, 0, 0, 0], candidates=5, expression='kind == "leaf"')

        async def search_forever() -> None:
            while True:
                await index.search_dense([1.0, 0, 0, 0], candidates=5, expression='kind == "leaf"')

        searching = asyncio.create_task(search_forever())
        await asyncio.sleep(0.2)
        (server,) = children_running(str(path))
        os.kill(server, signal.SIGKILL)
        with pytest.raises(RetrievalError, match=rf"Milvus Lite \({path}\) failed while searching by vector") as bad:
            await asyncio.wait_for(searching, 60)
        assert "open the index again" in (bad.value.fix or "")
    finally:
        await index.aclose()


@pytest.mark.slow
def test_the_cli_reports_an_unreachable_milvus_without_a_traceback(tmp_path: Path) -> None:
    done = run_agentstack(
        "search",
        "anything",
        env={"AGENTSTACK_HOME": str(tmp_path), "AGENTSTACK_MILVUS_URI": f"http://127.0.0.1:{free_port()}"},
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "error:" in done.stderr and "the Milvus server at http://127.0.0.1" in done.stderr
    assert "fix:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
async def test_falkordb_stopped_under_queries_is_a_retrieval_error(tmp_path: Path) -> None:
    server = LocalFalkorDB(tmp_path)
    graph = KnowledgeGraph(open_graph_store(server.start(), graph="boundaries"))
    try:
        await graph.setup()

        async def query_forever() -> None:
            while True:
                await graph.count_entities()

        querying = asyncio.create_task(query_forever())
        await asyncio.sleep(0.2)
        assert server.stop()
        with pytest.raises(RetrievalError, match=r"FalkorDB at 127\.0\.0\.1:\d+ failed: ") as bad:
            await asyncio.wait_for(querying, 60)
        assert "AGENTSTACK_GRAPH_URL" in (bad.value.fix or "")
        assert "password" not in str(bad.value).lower()
    finally:
        server.stop()
        await graph.store.aclose()


async def test_an_unreachable_neo4j_is_a_retrieval_error() -> None:
    port = free_port()
    store = open_graph_store(f"neo4j://neo4j:secret-pw@127.0.0.1:{port}")
    try:
        with pytest.raises(RetrievalError, match=rf"Neo4j at 127\.0\.0\.1:{port} failed: ServiceUnavailable") as bad:
            await KnowledgeGraph(store).setup()
        assert "secret-pw" not in str(bad.value)
    finally:
        await store.aclose()


@pytest.mark.parametrize("mode", ["html", "shape"])
async def test_odd_embeddings_and_rerank_replies_are_retrieval_errors(mode: str) -> None:
    with chat_server(mode) as (_proc, url):
        embedder = OpenAIEmbedder(url, "tiny", dimension=4)
        reranker = HttpReranker(url, model="tiny")
        try:
            with pytest.raises(RetrievalError, match="is not an embeddings reply"):
                await embedder.aembed_documents(["a text"])
            with pytest.raises(RetrievalError, match="is not a rerank reply"):
                await reranker.arerank("q", ["a", "b"], 2)
        finally:
            await embedder.aclose()
            await reranker.aclose()
