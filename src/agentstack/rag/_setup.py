"""`open_retrieval`: the hybrid index, embedder and reranker that `Settings` describe, closed together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from agentstack.config import Settings
from agentstack.rag._embeddings import Embedder, LocalEmbedder, OpenAIEmbedder
from agentstack.rag._falkordb_server import LocalFalkorDB
from agentstack.rag._graph import KnowledgeGraph, open_graph_store
from agentstack.rag._index import MilvusIndex
from agentstack.rag._ingest import Ingestor
from agentstack.rag._rerank import CohereReranker, HttpReranker, Reranker
from agentstack.rag._retriever import HybridRetriever

__all__ = ["Retrieval", "index_uri", "open_knowledge_graph", "open_retrieval"]


@dataclass
class Retrieval:
    """The parts of retrieval built from settings; pass them on (to graphs, tools) rather than rebuilding."""

    index: MilvusIndex
    embedder: Embedder
    reranker: Reranker | None
    retriever: HybridRetriever
    ingestor: Ingestor


def reranker_from(settings: Settings) -> Reranker | None:
    """The reranker `settings.chosen_reranker` names: a self-hosted endpoint, Cohere's API, or none.

    Cohere only when `reranker=cohere` says so: a COHERE_API_KEY that the environment holds for some other
    tool must not send this machine's documents to Cohere.
    """
    match settings.chosen_reranker:
        case "cohere":
            assert settings.cohere_api_key is not None  # Settings refuses reranker=cohere without the key
            return CohereReranker(settings.cohere_api_key.get_secret_value(), model=settings.rerank_model)
        case "http":
            assert settings.rerank_url is not None
            return HttpReranker(settings.rerank_url, model=settings.rerank_model)
        case _:
            return None


@asynccontextmanager
async def open_embedder(settings: Settings, *, warm: bool = True) -> AsyncIterator[Embedder]:
    """The embedder `settings` name (an OpenAI-compatible server, or the local model), without the index: what
    judging answers needs when another process holds the index (Milvus Lite opens in one process at a time)."""
    if settings.embedding_base_url:
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None
        remote = await OpenAIEmbedder.connect(settings.embedding_base_url, settings.embedding_model, api_key=key)
        try:
            yield remote
        finally:
            await remote.aclose()
        return
    # seconds of imports and weights: off the event loop, so a fleet or Postgres starts meanwhile
    local = await asyncio.to_thread(LocalEmbedder, settings.embedding_model)
    if warm:
        await local.aload()
    yield local


def index_uri(settings: Settings) -> str:
    """Where the index is: `settings.milvus_uri`, or the Milvus Lite file `<home>/milvus.db`."""
    return settings.milvus_uri or str(settings.home / "milvus.db")


@asynccontextmanager
async def open_retrieval(
    settings: Settings, *, embedder: Embedder | None = None, warm: bool = True
) -> AsyncIterator[Retrieval]:
    """Open (creating if needed) the index in `settings.milvus_uri` or `<home>/milvus.db`.

    `warm=False` leaves the local embedder's model to load on first use: for a process that may never embed.
    """
    async with AsyncExitStack() as stack:
        uri = index_uri(settings)
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        # Milvus first: a wrong URI fails in a second, not after the embedder's load
        index = await MilvusIndex._connect(uri, collection=settings.collection, token=token)
        stack.push_async_callback(index.aclose)
        if embedder is None:
            embedder = await stack.enter_async_context(open_embedder(settings, warm=warm))
        await index._prepare(dimension=embedder.dimension, embedder=embedder.name)
        reranker = reranker_from(settings)
        if reranker is not None:
            stack.push_async_callback(reranker.aclose)
        yield Retrieval(
            index=index,
            embedder=embedder,
            reranker=reranker,
            retriever=HybridRetriever(index, embedder, reranker),
            ingestor=Ingestor(index, embedder),
        )


@asynccontextmanager
async def open_knowledge_graph(settings: Settings) -> AsyncIterator[KnowledgeGraph]:
    """The graph at `settings.graph_url`, or the local FalkorDB (started if needed; it keeps running)."""
    url = settings.graph_url or await asyncio.to_thread(LocalFalkorDB(settings.home).start)
    store = open_graph_store(url)
    try:
        graph = KnowledgeGraph(store)
        await graph.setup()
        yield graph
    finally:
        await store.aclose()
