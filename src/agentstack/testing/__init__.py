"""agentstack's pytest plugin (registered through the `pytest11` entry point) and test doubles.

Fixtures:
- `agentstack_postgres`: the URL of a fresh database on a real PostgreSQL server that is
  started once per test session (fsync off) and removed at its end.
- `saver`: a `PoolSaver` on that database, tables created (async; needs pytest-asyncio).
- `scripted_model`: a factory, `scripted_model(["reply", {...}, AIMessage(...)])` or
  `scripted_model(lambda messages, tools: ...)`, returning a `ScriptedChatModel`.
- `resumable`: `await resumable(graph, input)` interrupts the graph after every superstep,
  resumes it, and asserts the same final state with no completed superstep run twice.
- `agentstack_embedder`: the default local embedder (all-MiniLM-L6-v2 from PyPI), loaded once per session.
- `hybrid_index`: a `Retrieval` (index, embedder, retriever, ingestor) on a fresh Milvus Lite index in the
  test's temporary directory (async; needs `agentstack[local]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

from agentstack.testing._postgres import TestPostgres
from agentstack.testing._resumable import ResumeReport, check_resumable
from agentstack.testing._scripted_model import Reply, Responder, ScriptedChatModel, ScriptExhaustedError

__all__ = [
    "ResumeReport",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "TestPostgres",
    "check_resumable",
]


@pytest.fixture(scope="session")
def agentstack_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPostgres]:
    """One real PostgreSQL server for the whole test session."""
    server = TestPostgres(tmp_path_factory.mktemp("agentstack-postgres"))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def agentstack_postgres(agentstack_postgres_server: TestPostgres) -> Iterator[str]:
    """URL of a database of its own for this test, dropped afterwards."""
    url = agentstack_postgres_server.create_database()
    try:
        yield url
    finally:
        agentstack_postgres_server.drop_database(url)


@pytest.fixture
def scripted_model() -> Callable[[Sequence[Reply] | Responder], ScriptedChatModel]:
    """Factory of deterministic chat models: pass the replies, or a function choosing them."""
    return ScriptedChatModel.from_script


@pytest.fixture
def resumable() -> Callable[..., Any]:
    """`await resumable(graph, input, config=None, normalize=...)`: see `check_resumable`."""
    return check_resumable


@pytest.fixture(scope="session")
def agentstack_embedder() -> Any:
    """The default local embedder, loaded once: loading the model takes seconds."""
    from agentstack.rag import LocalEmbedder

    return LocalEmbedder()


try:
    import pytest_asyncio
except ImportError:  # the plugin still loads; only the async fixture explains what is missing

    def _needs_pytest_asyncio(name: str) -> Any:
        from agentstack.errors import MissingDependencyError

        raise MissingDependencyError(
            f"the `{name}` fixture is async and needs pytest-asyncio", fix="pip install 'agentstack[testing]'"
        )

    @pytest.fixture
    def saver() -> Any:
        return _needs_pytest_asyncio("saver")

    @pytest.fixture
    def hybrid_index() -> Any:
        return _needs_pytest_asyncio("hybrid_index")

else:

    @pytest_asyncio.fixture
    async def saver(agentstack_postgres: str) -> AsyncIterator[Any]:
        """A `PoolSaver` on this test's database, with its tables created."""
        from agentstack.checkpoint import open_saver
        from agentstack.config import Settings

        async with open_saver(agentstack_postgres, settings=Settings.load(), pool_size=5) as pool_saver:
            yield pool_saver

    @pytest_asyncio.fixture
    async def hybrid_index(tmp_path: Any, agentstack_embedder: Any) -> AsyncIterator[Any]:
        """A fresh Milvus Lite hybrid index with the default embedder and no reranker."""
        from agentstack.rag import HybridRetriever, Ingestor, MilvusIndex, Retrieval

        embedder = agentstack_embedder
        index = await MilvusIndex.open(tmp_path / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
        try:
            yield Retrieval(
                index=index,
                embedder=embedder,
                reranker=None,
                retriever=HybridRetriever(index, embedder),
                ingestor=Ingestor(index, embedder),
            )
        finally:
            await index.aclose()
