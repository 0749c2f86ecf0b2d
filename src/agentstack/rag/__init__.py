"""Hybrid retrieval: ingestion into Milvus (dense + BM25), reciprocal rank fusion, reranking, graph RAG.

    async with open_retrieval(settings) as rag:             # index, embedder, reranker from Settings
        await rag.ingestor.aingest_paths(["docs/"])
        result = await rag.retriever.aretrieve("how do I resume a thread?", k=5)

Or build the parts yourself:

    embedder = LocalEmbedder()                              # all-MiniLM-L6-v2 from PyPI, offline
    index = await MilvusIndex.open(home / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
    await Ingestor(index, embedder).aingest_paths(["docs/"])
    result = await HybridRetriever(index, embedder).aretrieve("how do I resume a thread?", k=5)

Only what users call is exported here; the rest (filter expressions, entity keys, the local FalkorDB
server, the fusion formula, loaders) lives in private modules and may change. The names load on first
use (PEP 562): `agentstack.rag._types` (what a retrieval returns) is imported by light code, the test
kit's in-memory retriever among it, which must not pay for llama-index and Milvus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Chunk": "agentstack.rag._types",
    "Chunker": "agentstack.rag._chunking",
    "CohereReranker": "agentstack.rag._rerank",
    "Document": "agentstack.rag._types",
    "Embedder": "agentstack.rag._embeddings",
    "Extraction": "agentstack.rag._graph",
    "GraphExtractor": "agentstack.rag._graph",
    "GraphIngestor": "agentstack.rag._graph",
    "GraphResult": "agentstack.rag._graph",
    "GraphRetriever": "agentstack.rag._graph",
    "GraphStore": "agentstack.rag._graph",
    "HttpReranker": "agentstack.rag._rerank",
    "HybridRetriever": "agentstack.rag._retriever",
    "IngestReport": "agentstack.rag._ingest",
    "Ingestor": "agentstack.rag._ingest",
    "KnowledgeGraph": "agentstack.rag._graph",
    "LangChainRetriever": "agentstack.rag._adapters",
    "LocalEmbedder": "agentstack.rag._embeddings",
    "MilvusIndex": "agentstack.rag._index",
    "OpenAIEmbedder": "agentstack.rag._embeddings",
    "ParentChildChunker": "agentstack.rag._chunking",
    "Reranker": "agentstack.rag._rerank",
    "Retrieval": "agentstack.rag._setup",
    "RetrievalResult": "agentstack.rag._types",
    "ScoredChunk": "agentstack.rag._types",
    "SemanticChunker": "agentstack.rag._chunking",
    "llama_index_retriever": "agentstack.rag._adapters",
    "open_graph_store": "agentstack.rag._graph",
    "open_knowledge_graph": "agentstack.rag._setup",
    "open_retrieval": "agentstack.rag._setup",
    "retrieval_tool": "agentstack.rag._adapters",
}

__all__ = [
    "Chunk",
    "Chunker",
    "CohereReranker",
    "Document",
    "Embedder",
    "Extraction",
    "GraphExtractor",
    "GraphIngestor",
    "GraphResult",
    "GraphRetriever",
    "GraphStore",
    "HttpReranker",
    "HybridRetriever",
    "IngestReport",
    "Ingestor",
    "KnowledgeGraph",
    "LangChainRetriever",
    "LocalEmbedder",
    "MilvusIndex",
    "OpenAIEmbedder",
    "ParentChildChunker",
    "Reranker",
    "Retrieval",
    "RetrievalResult",
    "ScoredChunk",
    "SemanticChunker",
    "llama_index_retriever",
    "open_graph_store",
    "open_knowledge_graph",
    "open_retrieval",
    "retrieval_tool",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.rag._adapters import LangChainRetriever, llama_index_retriever, retrieval_tool
    from agentstack.rag._chunking import Chunker, ParentChildChunker, SemanticChunker
    from agentstack.rag._embeddings import Embedder, LocalEmbedder, OpenAIEmbedder
    from agentstack.rag._graph import (
        Extraction,
        GraphExtractor,
        GraphIngestor,
        GraphResult,
        GraphRetriever,
        GraphStore,
        KnowledgeGraph,
        open_graph_store,
    )
    from agentstack.rag._index import MilvusIndex
    from agentstack.rag._ingest import Ingestor, IngestReport
    from agentstack.rag._rerank import CohereReranker, HttpReranker, Reranker
    from agentstack.rag._retriever import HybridRetriever
    from agentstack.rag._setup import Retrieval, open_knowledge_graph, open_retrieval
    from agentstack.rag._types import Chunk, Document, RetrievalResult, ScoredChunk
